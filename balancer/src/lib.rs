//! Palaver balancer (built in a later step).
