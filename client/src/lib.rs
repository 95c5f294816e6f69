//! Palaver client.
