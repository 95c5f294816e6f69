//! The web client in a real browser: headless Chromium, driven over the
//! DevTools protocol (`browser/cdp.rs`), against three `palaver node`
//! processes behind the balancer, the page loaded from the balancer's
//! address as a person would, over TLS with the certificate `palaver certs
//! --tls` makes (the browser trusts its key, as a person trusts the local
//! CA).
//!
//! People register, create and join rooms, chat both ways, see each other
//! typing and online; answer, correct and react to a message, attach an
//! image and a file, and see who
//! read it; a private room stays hidden from a third person; a
//! direct message works (over SSE, for a page whose origin may not open
//! WebSockets); markup in a message stays text; a node is SIGKILLed while
//! two people chat and afterwards both screens hold exactly the server's
//! history; 300 messages page back in order. Elements are found only by
//! their `data-test` names (docs/protocol.md §10) and ids.
//!
//! Screenshots go to `target/screenshots/`. Without Chromium the test says
//! why and passes, unless `PALAVER_CI` is set: then it fails.

#[path = "browser/cdp.rs"]
mod cdp;

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use cdp::Page;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_testkit::Cluster;
use palaver_testkit::User;
use serde_json::Value;

const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (360, 740);
/// Messages in the room paged back through.
const ARCHIVE: u64 = 300;
/// Messages each of two people sends while a node dies.
const DURING_FAILOVER: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_chat_in_a_real_browser_through_the_balancer() -> Result<()> {
    let Some(exe) = chromium() else { return Ok(()) };
    let t0 = Instant::now();
    // The public address serves TLS with the certificate `palaver certs
    // --tls` makes, as `palaver up --tls` does; the browser trusts exactly
    // that certificate's key.
    let tls_dir = tempfile::tempdir()?;
    let (tls, spki) = public_certificate(tls_dir.path())?;
    // The balancer's port is chosen first: the nodes must allow its origin.
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://{}", public.local_addr()?);
    let config = palaver_testkit::config(|c| {
        c.security.allowed_origins = vec![base.clone()];
        // Small pages, so paging back follows the server's `x-next-page`.
        c.limits.history_page_bytes = 8192;
    });
    let mut cluster = Cluster::start_with(3, config).await?;
    let root = cluster.admin(1, "root").await?;
    let _balancer = balance(&cluster, public, Some(tls)).await?;
    seed_archive(&cluster.http_as(1, &root)).await?;
    let chrome = cdp::Chrome::launch(&exe, &[format!("--ignore-certificate-errors-spki-list={spki}")]).await?;
    println!("cluster, balancer and browser up in {:?}", t0.elapsed());
    let shots = screenshot_dir();

    // First load through the balancer, with an empty cache.
    let ann = chrome.page("ann", DESKTOP.0, DESKTOP.1).await?;
    ann.goto(&format!("{base}/")).await?;
    let timing = ann
        .wait(
            "navigation timing",
            "(() => { const n = performance.getEntriesByType('navigation')[0];
               if (!n || n.loadEventEnd === 0) return null;
               const files = performance.getEntriesByType('resource');
               return { load: n.loadEventEnd - n.startTime, ready: n.domContentLoadedEventEnd - n.startTime,
                        first_byte: n.responseStart - n.startTime, files: files.length,
                        bytes: files.reduce((s, f) => s + f.encodedBodySize, n.encodedBodySize) }; })()",
        )
        .await?;
    println!(
        "first load of {base}/ through the balancer: {:.0} ms to load (DOMContentLoaded {:.0} ms, first byte {:.0} ms), {} files after the page, {} bytes",
        timing["load"].as_f64().unwrap_or(-1.0),
        timing["ready"].as_f64().unwrap_or(-1.0),
        timing["first_byte"].as_f64().unwrap_or(-1.0),
        timing["files"],
        timing["bytes"]
    );
    ann.screenshot(&shots.join("desktop-login.png")).await?;

    // ann registers with the mouse and creates a public room.
    register(&ann, "ann").await?;
    create_room(&ann, "lobby", "public").await?;

    // bob registers with the keyboard only, finds the room and joins it.
    let bob = chrome.page("bob", DESKTOP.0, DESKTOP.1).await?;
    bob.goto(&format!("{base}/")).await?;
    bob.click(&test("username")).await?;
    bob.type_text("bob").await?;
    bob.press("Tab").await?;
    bob.type_text(&password("bob")).await?;
    bob.press("Tab").await?; // Log in
    bob.press("Tab").await?; // Register
    bob.press("Enter").await?;
    logged_in(&bob, "bob").await?;
    bob.click(&item("room-item", "data-room", "lobby")).await?;
    bob.click("#join-this").await?;
    bob.wait("bob's composer", &visible(&test("composer"))).await?;

    // Both online, both ways, typing seen by the other.
    online(&ann, "bob", true).await?;
    online(&bob, "ann", true).await?;
    say(&ann, "hello bob").await?;
    shows(&bob, "hello bob").await?;
    bob.fill(&test("composer"), "hi ann, sent with the button").await?;
    bob.click(&test("send")).await?;
    shows(&ann, "hi ann, sent with the button").await?;
    bob.fill(&test("composer"), "bob is writing something").await?;
    ann.wait("ann to see bob typing", &text_has(&test("typing"), "bob is typing")).await?;
    bob.press("Enter").await?;
    ann.fill(&test("composer"), "ann answers").await?;
    bob.wait("bob to see ann typing", &text_has(&test("typing"), "ann is typing")).await?;
    ann.press("Enter").await?;
    shows(&bob, "ann answers").await?;

    // Markup in a message is shown as text, never run.
    let attack = "<img src=x onerror=alert(1)>";
    say(&ann, attack).await?;
    for page in [&ann, &bob] {
        shows(page, attack).await?;
        let images = page.eval(&count(&format!("{} img", test("message")))).await?;
        assert_eq!(images, 0, "{}: the message became an element", page.name);
    }
    ann.screenshot(&shots.join("desktop-chat.png")).await?;

    // A private room: bob is invited and joins by its id.
    create_room(&ann, "secret", "private").await?;
    ann.fill("#invite-user", "bob").await?;
    ann.click("#invite").await?;
    ann.wait("the invitation", &text_has("#mod-status", "bob invited")).await?;
    bob.fill("#join-room-name", "secret").await?;
    bob.press("Enter").await?;
    bob.wait("bob in the private room", &visible(&item("room-item", "data-room", "secret"))).await?;
    online(&ann, "bob", true).await?;
    say(&bob, "our secret").await?;
    shows(&ann, "our secret").await?;
    reply_edit_react(&ann, &bob).await?;
    bob.screenshot(&shots.join("desktop-reply-edit-react.png")).await?;
    attach_files(&ann, &bob).await?;
    bob.screenshot(&shots.join("desktop-attachments.png")).await?;
    search_and_jump(&bob).await?;
    bob.screenshot(&shots.join("desktop-search.png")).await?;

    // carol, on a phone, loads the page from a node whose origin may not
    // open WebSockets: the page falls back to SSE.
    let carol = chrome.page("carol", PHONE.0, PHONE.1).await?;
    let node_url = format!("http://{}/", cluster.addr(1));
    carol.goto(&node_url).await?;
    carol.screenshot(&shots.join("phone-login.png")).await?;
    register(&carol, "carol").await?;
    carol.wait("carol on SSE", &text_has("#conn", "(SSE)")).await?;
    carol.wait("carol's room list", &visible(&item("room-item", "data-room", "lobby"))).await?;
    let hidden = carol.eval(&count(&item("room-item", "data-room", "secret"))).await?;
    assert_eq!(hidden, 0, "carol sees the private room in her list");
    carol.fill("#join-room-name", "secret").await?;
    carol.press("Enter").await?;
    carol.wait("carol's error", &text_has(&test("error"), "not found")).await?;
    carol.click("#error-close").await?;
    carol.screenshot(&shots.join("phone-rooms.png")).await?;

    // A direct message, started by name on both sides.
    ann.fill("#dm-user", "carol").await?;
    ann.press("Enter").await?;
    ann.wait("ann's DM", &visible(&item("room-item", "data-room", "dm:ann:carol"))).await?;
    say(&ann, "hi carol, just us").await?;
    carol.fill("#dm-user", "ann").await?;
    carol.press("Enter").await?;
    shows(&carol, "hi carol, just us").await?;
    say(&carol, "hi ann, from my phone").await?;
    shows(&ann, "hi ann, from my phone").await?;
    online(&ann, "carol", true).await?;
    carol.screenshot(&shots.join("phone-room.png")).await?;

    // While ann reads the DM, bob writes in the lobby: ann's unread count.
    bob.click(&item("room-item", "data-room", "lobby")).await?;
    say(&bob, "are you there, ann?").await?;
    ann.wait("ann's unread count", &text_is(&item("unread", "data-room", "lobby"), "1")).await?;
    ann.click(&item("room-item", "data-room", "lobby")).await?;
    ann.wait("the count to clear", &text_is(&item("unread", "data-room", "lobby"), "0")).await?;
    chat_through_a_node_failure(&mut cluster, &root, &ann, &bob).await?;

    // Paging back through a long history.
    page_back(&ann).await?;
    ann.screenshot(&shots.join("desktop-history.png")).await?;

    ann.click(&item("room-item", "data-room", "lobby")).await?;
    moderate(&ann, &bob).await?;

    // bob logs out: ann sees him go offline, and he is back at the login.
    ann.click(&item("room-item", "data-room", "secret")).await?;
    online(&ann, "bob", true).await?;
    bob.click(&test("logout")).await?;
    bob.wait("bob's login form", &visible(&test("login"))).await?;
    online(&ann, "bob", false).await?;
    accounts(&chrome, &base, &ann, &bob, &root).await?;
    bob.screenshot(&shots.join("desktop-disabled.png")).await?;

    for page in [&ann, &bob, &carol] {
        assert!(page.dialogs().is_empty(), "{} opened dialogs: {:?}", page.name, page.dialogs());
    }
    println!("browser test done in {:?}; screenshots in {}", t0.elapsed(), shots.display());
    Ok(())
}

/// bob logs in and changes his password in the account panel; ann, a user,
/// has no admin panel; root, the admin, makes an invite code and disables
/// bob, whose page is sent back to the login at once.
/// Behind a plain balancer whose nodes are on the page's host, the page's
/// WebSocket goes to the node `GET /assign` names (the node the page's
/// connection was relayed to answers it): once the pages are
/// online the balancer can stop, and with it every connection it relays,
/// while the two people go on chatting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_talks_to_its_assigned_node_without_the_balancer() -> Result<()> {
    let Some(exe) = chromium() else { return Ok(()) };
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", public.local_addr()?);
    let config = palaver_testkit::config(|c| c.security.allowed_origins = vec![base.clone()]);
    let cluster = Cluster::start_with(2, config).await?;
    let balancer = balance(&cluster, public, None).await?;
    let chrome = cdp::Chrome::launch(&exe, &[]).await?;
    let ann = chrome.page("ann", DESKTOP.0, DESKTOP.1).await?;
    ann.goto(&format!("{base}/")).await?;
    register(&ann, "ann").await?;
    create_room(&ann, "direct", "public").await?;
    let bob = chrome.page("bob", DESKTOP.0, DESKTOP.1).await?;
    bob.goto(&format!("{base}/")).await?;
    register(&bob, "bob").await?;
    bob.click(&item("room-item", "data-room", "direct")).await?;
    bob.click("#join-this").await?;
    bob.wait("bob's composer", &visible(&test("composer"))).await?;
    online(&ann, "bob", true).await?;
    say(&ann, "through the node it was given").await?;
    shows(&bob, "through the node it was given").await?;

    // Dropped, the balancer's task ends and takes every relayed connection
    // with it: a page whose socket went through it would go offline here.
    drop(balancer);
    say(&bob, "the balancer is gone and we still talk").await?;
    shows(&ann, "the balancer is gone and we still talk").await?;
    say(&ann, "both ways").await?;
    shows(&bob, "both ways").await?;
    Ok(())
}

async fn accounts(chrome: &cdp::Chrome, base: &str, ann: &Page, bob: &Page, root: &User) -> Result<()> {
    // The login form keeps the name typed before: typing adds to it.
    clear(bob, &test("username")).await?;
    bob.fill(&test("username"), "bob").await?;
    bob.fill(&test("password"), &password("bob")).await?;
    bob.click(&test("login")).await?;
    logged_in(bob, "bob").await?;
    bob.click(&test("account-open")).await?;
    bob.wait("bob's account panel", &visible(&test("password-save"))).await?;
    let admin_panel = bob.eval(&format!("document.querySelector({}).hidden", js(&test("admin-panel")))).await?;
    assert_eq!(admin_panel, true, "a user sees the admin panel");
    bob.fill(&test("password-old"), &password("bob")).await?;
    bob.fill(&test("password-new"), "bobs-new-password").await?;
    bob.click(&test("password-save")).await?;
    bob.wait("the password change", &text_has(&test("password-status"), "Password changed")).await?;
    bob.click(&test("account-close")).await?;

    let admin = chrome.page("root", DESKTOP.0, DESKTOP.1).await?;
    admin.goto(&format!("{base}/")).await?;
    admin.fill(&test("username"), &root.name).await?;
    admin.fill(&test("password"), &root.password).await?;
    admin.click(&test("login")).await?;
    admin.wait("root's name", &text_has("#me", "(admin)")).await?;
    admin.click(&test("account-open")).await?;
    admin.click(&test("invite-create")).await?;
    let code = admin
        .wait("an invite code", &format!("document.querySelector({}).textContent || null", js(&test("invite-code"))))
        .await?;
    assert!(code.as_str().is_some_and(|c| c.len() >= 16), "invite code {code}");
    admin.fill(&test("users-prefix"), "bo").await?;
    admin.click(&test("users-find")).await?;
    let bob_row = item("admin-user", "data-username", "bob");
    admin
        .wait(
            "the list of names starting bo",
            &format!("{} === 1 && {}", count(&test("admin-user")), visible(&bob_row)),
        )
        .await?;
    admin.click(&format!("{bob_row} {}", test("admin-toggle"))).await?;
    admin.wait("bob disabled", &visible(&item("admin-user", "data-disabled", "true"))).await?;
    bob.wait("bob sent back to the login", &visible(&test("login"))).await?;
    online(ann, "bob", false).await?;
    clear(bob, &test("username")).await?;
    clear(bob, &test("password")).await?;
    bob.fill(&test("username"), "bob").await?;
    bob.fill(&test("password"), "bobs-new-password").await?;
    bob.click(&test("login")).await?;
    bob.wait("bob told he is disabled", &text_has(&test("error"), "disabled")).await?;
    Ok(())
}

/// ann and bob chat; the owner of their room's log (or a node serving
/// them) is SIGKILLed in the middle. Then both screens show exactly the
/// server's history: nothing missing, nothing twice.
async fn chat_through_a_node_failure(cluster: &mut Cluster, root: &User, ann: &Page, bob: &Page) -> Result<()> {
    let victim = victim(cluster, root, "lobby").await?;
    let t = Instant::now();
    let mut sent = Vec::new();
    for i in 0..DURING_FAILOVER {
        for (page, who) in [(ann, "ann"), (bob, "bob")] {
            let text = format!("{who} during the failover, {i}");
            say(page, &text).await?;
            sent.push(text);
        }
        if i == 1 {
            cluster.kill(victim);
            println!("SIGKILLed node {victim} while ann and bob chat");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let alive = cluster.ids().into_iter().find(|&id| id != victim).context("a live node")?;
    let http = cluster.http_as(alive, root);
    let history = palaver_testkit::eventually("every message stored", Duration::from_secs(60), async || {
        let h = server_history(&http, "lobby").await?;
        let stored = sent.iter().all(|s| h.iter().any(|(_, body)| body == s));
        Ok(stored.then_some(h))
    })
    .await?;
    for s in &sent {
        let copies = history.iter().filter(|(_, body)| body == s).count();
        assert_eq!(copies, 1, "{s:?} is stored {copies} times");
    }
    let want: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(want, (1..=want.len() as u64).collect::<Vec<_>>(), "the server's seqs have a gap");
    let want_json = serde_json::to_string(&want)?;
    for page in [ann, bob] {
        let expr = format!("JSON.stringify({}) === {want_json:?} && {}", seqs_on_screen(), nothing_pending());
        if let Err(e) = page.wait_for("the screen to match the server", &expr, Duration::from_secs(45)).await {
            let shown = page.eval(&seqs_on_screen()).await?;
            bail!("{e:#}\nserver: {want_json}\n{} shows: {shown}", page.name);
        }
        for s in &sent {
            let copies = page.eval(&count_with_text(s)).await?;
            assert_eq!(copies, 1, "{} shows {s:?} {copies} times", page.name);
        }
    }
    println!("after the failover both screens match the server's {} messages ({:?})", want.len(), t.elapsed());
    Ok(())
}

/// ann owns the lobby: she mutes bob (his send is refused with a readable
/// error), unmutes him, deletes his message, reads the audit log and kicks
/// him (he reads on, as anyone may in a public room, but cannot write).
async fn moderate(ann: &Page, bob: &Page) -> Result<()> {
    online(ann, "bob", true).await?;
    ann.click("#manage-bob").await?;
    ann.click("#mute-bob").await?;
    ann.wait("the mute done", &text_has("#mod-status", "bob muted")).await?;
    say(bob, "can I still talk?").await?;
    bob.wait("bob's mute error", &text_has(&test("error"), "muted")).await?;
    bob.click("#error-close").await?;
    ann.click("#unmute-bob").await?;
    ann.wait("the unmute done", &text_has("#mod-status", "bob unmuted")).await?;
    // The refused text went back into the composer.
    bob.wait(
        "the text back",
        &format!("document.querySelector({}).value === 'can I still talk?'", js(&test("composer"))),
    )
    .await?;
    bob.click(&test("composer")).await?;
    bob.press("Enter").await?;
    shows(ann, "can I still talk?").await?;
    let seq = last_seq_from(ann, "bob").await?;
    let message = item("message", "data-seq", &seq);
    ann.hover(&message).await?;
    ann.click(&format!("#delete-{seq}")).await?;
    for page in [ann, bob] {
        page.wait("the message deleted", &text_has(&message, "message deleted")).await?;
    }
    ann.click("#audit-open").await?;
    ann.wait(
        "the audit log",
        &format!("{} && {}", text_has("#audit", "mute bob"), text_has("#audit", "delete message bob")),
    )
    .await?;
    ann.click("#kick-bob").await?;
    bob.wait("bob told he was kicked", &text_has(&test("error"), "kicked")).await?;
    bob.wait("bob may join again", &visible("#join-this")).await?;
    bob.click("#error-close").await?;
    say(ann, "the lobby stays public").await?;
    shows(bob, "the lobby stays public").await?;
    ann.wait("bob gone from the members", &format!("{} === 0", count(&item("presence", "data-username", "bob"))))
        .await?;
    Ok(())
}

/// In the private room: ann answers bob's message, bob corrects his, ann
/// reacts to it; both screens show the quote, the new text with its
/// "(edited)" mark and the reaction, and bob sees that ann has read it all.
async fn reply_edit_react(ann: &Page, bob: &Page) -> Result<()> {
    let seq = last_seq_from(ann, "bob").await?;
    let message = item("message", "data-seq", &seq);
    ann.hover(&message).await?;
    ann.click(&format!("{message} {}", test("reply"))).await?;
    ann.wait("the reply bar", &text_has(&test("composing"), "Replying to bob")).await?;
    say(ann, "a reply to the secret").await?;
    let quote = format!("{} {}", test("message"), item("reply-quote", "data-reply-to", &seq));
    for page in [ann, bob] {
        page.wait("the quoted message", &text_has(&quote, "bob: our secret")).await?;
    }

    bob.hover(&message).await?;
    bob.click(&format!("{message} {}", test("edit"))).await?;
    bob.wait("the edit bar", &text_has(&test("composing"), "Editing")).await?;
    bob.wait(
        "the old text in the composer",
        &format!("document.querySelector({}).value === 'our secret'", js(&test("composer"))),
    )
    .await?;
    // The old text is there to be corrected; bob clears it and types anew.
    bob.eval(&format!("document.querySelector({}).value = ''", js(&test("composer")))).await?;
    bob.fill(&test("composer"), "our big secret").await?;
    bob.press("Enter").await?;
    for page in [ann, bob] {
        page.wait("the new text", &text_has(&message, "our big secret")).await?;
        page.wait("the edited mark", &count(&format!("{message} {}", test("edited")))).await?;
        page.wait("the quote follows the edit", &text_has(&quote, "bob: our big secret")).await?;
    }

    ann.hover(&message).await?;
    ann.click(&format!("{message} {}", test("react"))).await?;
    ann.click(&format!("{message} {}", item("react-choice", "data-emoji", "👍"))).await?;
    let chip = format!("{message} {}[data-count=\"1\"]", item("reaction", "data-emoji", "👍"));
    for page in [ann, bob] {
        page.wait("the reaction", &count(&chip)).await?;
    }
    bob.wait("ann's receipt", &text_has(&test("seen-by"), "Seen by ann")).await?;
    Ok(())
}

/// A 1×1 PNG.
const DOT_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/// Picks a file for the `attach` input as a person would (the bytes made
/// in the page: a test cannot drive the browser's file dialog).
async fn attach(page: &Page, name: &str, kind: &str, base64: &str) -> Result<()> {
    page.eval(&format!(
        "(() => {{ const bytes = Uint8Array.from(atob({b}), c => c.charCodeAt(0)); \
           const dt = new DataTransfer(); dt.items.add(new File([bytes], {n}, {{ type: {k} }})); \
           const input = document.querySelector({sel}); input.files = dt.files; \
           input.dispatchEvent(new Event('change')); return true; }})()",
        b = js(base64),
        n = js(name),
        k = js(kind),
        sel = js(&test("attach")),
    ))
    .await?;
    Ok(())
}

/// In the private room: ann attaches an image and a text file; both
/// screens show the picture (loaded: it has a width) and a link to the
/// other file.
async fn attach_files(ann: &Page, bob: &Page) -> Result<()> {
    attach(ann, "dot.png", "image/png", DOT_PNG).await?;
    attach(ann, "notes.txt", "text/plain", "aGVsbG8gZnJvbSBhbm4K").await?;
    let image = format!("{}[alt=\"dot.png\"]", test("attachment-image"));
    let loaded = format!("(document.querySelector({})?.naturalWidth ?? 0) === 1", js(&image));
    let link = format!("{}[data-name=\"notes.txt\"]", test("attachment"));
    for page in [ann, bob] {
        page.wait("the image, shown", &loaded).await?;
        page.wait("the file, as a link", &text_has(&link, "notes.txt")).await?;
    }
    Ok(())
}

/// bob searches every room for an old message of a room he never opened,
/// clicks the one result and sees the message brought into view.
async fn search_and_jump(bob: &Page) -> Result<()> {
    bob.fill(&test("search-input"), "Archive 007").await?;
    bob.click(&test("search-submit")).await?;
    let hit = format!("{}[data-room=\"archive\"][data-seq=\"7\"]", test("search-result"));
    bob.wait("the search result", &count(&hit)).await?;
    assert_eq!(bob.eval(&count(&test("search-result"))).await?, 1, "only the message holding both words");
    bob.click(&hit).await?;
    bob.wait("the archive open", &text_is("#room-title", "archive")).await?;
    let target = js(&item("message", "data-seq", "7"));
    let in_view = format!(
        "(() => {{ const e = document.querySelector({target}); if (!e) return false; \
         const r = e.getBoundingClientRect(), s = document.getElementById('scroller').getBoundingClientRect(); \
         return r.top >= s.top && r.bottom <= s.bottom; }})()"
    );
    bob.wait("the found message in view", &in_view).await.map(drop)
}

/// A public room with [`ARCHIVE`] messages, message i at seq i.
async fn seed_archive(http: &Http) -> Result<()> {
    http.create_room("archive", "archive", Visibility::Public).await?;
    // Long enough bodies that a page of 50 is over the 8 KiB page budget.
    let filler = "lorem ipsum dolor sit amet ".repeat(6);
    for i in 1..=ARCHIVE {
        http.post_message("archive", &format!("archive {i:03} {filler}"), &format!("archive-{i}")).await?;
    }
    Ok(())
}

/// The page loads the newest messages of the archive and, as ann scrolls
/// up, the older ones: each once, in order.
async fn page_back(ann: &Page) -> Result<()> {
    let t = Instant::now();
    ann.wait("the archive in ann's list", &visible(&item("room-item", "data-room", "archive"))).await?;
    ann.click(&item("room-item", "data-room", "archive")).await?;
    ann.wait("the newest archive messages", &format!("{} >= 20", count(&test("message")))).await?;
    let start = Instant::now();
    loop {
        let n = ann.eval(&count(&test("message"))).await?.as_u64().unwrap_or(0);
        if n >= ARCHIVE {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("only {n} of {ARCHIVE} messages after 30 s of scrolling up");
        }
        ann.wheel("#scroller", -4000.0).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seqs = ann.eval(&seqs_on_screen()).await?;
    let want: Vec<u64> = (1..=ARCHIVE).collect();
    assert_eq!(seqs, serde_json::to_value(&want)?, "the archive on screen");
    let first =
        ann.eval(&format!("document.querySelector('{}').textContent", item("message", "data-seq", "1"))).await?;
    assert!(first.as_str().unwrap_or_default().contains("archive 001"), "message 1 reads {first}");
    println!("paged back through {ARCHIVE} messages in {:?}", t.elapsed());
    Ok(())
}

/// The node to kill: the owner of `room`'s log if a browser is connected
/// to it, else the node with the most connections.
async fn victim(cluster: &Cluster, root: &User, room: &str) -> Result<u64> {
    let mut owner = None;
    let mut best = (0, 0);
    for id in cluster.ids() {
        let view = cluster.http_as(id, root).request(palaver_client::Method::GET, "/api/cluster", None).await?.json;
        if owner.is_none() {
            owner = view["rooms"]
                .as_array()
                .and_then(|rooms| rooms.iter().find(|r| r["room"] == room).and_then(|r| r["owner_node"].as_u64()));
        }
        let mine = view["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
            .and_then(|n| n["connections"].as_u64())
            .unwrap_or(0);
        println!("node {id}: {mine} live connections");
        if mine > best.1 {
            best = (id, mine);
        }
        if Some(id) == owner && mine > 0 {
            println!("node {id} owns {room} and serves a browser");
            return Ok(id);
        }
    }
    if best.1 == 0 {
        bail!("no node reports a browser connection");
    }
    Ok(best.0)
}

/// Every message of `room` as (seq, body), following the server's page cursors.
async fn server_history(http: &Http, room: &str) -> Result<Vec<(u64, String)>> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|(seq, _)| *seq).unwrap_or(0);
        let page = http.messages_after(room, after, Some(500)).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page.into_iter().map(|m| (m.seq, m.body.unwrap_or_default())));
    }
}

/// Starts the in-process balancer over `cluster` on an already bound listener.
/// Runs `palaver certs --tls` for a cluster file whose data folder is in
/// `dir`: the certificate and key it made, and the base64 SHA-256 of the
/// key's SubjectPublicKeyInfo (what Chromium's
/// `--ignore-certificate-errors-spki-list` trusts).
fn public_certificate(dir: &std::path::Path) -> Result<(palaver_balancer::TlsFiles, String)> {
    use base64::Engine;
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let files = palaver_testkit::public_cert(dir)?.files;
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&files.key)?)?;
    let spki = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(key.subject_public_key_info()));
    Ok((files, spki))
}

async fn balance(
    cluster: &Cluster,
    listener: tokio::net::TcpListener,
    tls: Option<palaver_balancer::TlsFiles>,
) -> Result<Balancer> {
    let nodes = cluster.backends();
    let settings = palaver_balancer::BalancerSettings {
        nodes,
        discover: false,
        tls,
        ..palaver_balancer::BalancerSettings::default()
    };
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(palaver_balancer::run(settings, listener, admin, async move {
        let _ = stopped.await;
    }));
    Ok(Balancer { _stop: stop, task })
}

/// The balancer's task; it stops when dropped, and with it every
/// connection it relays.
struct Balancer {
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::result::Result<(), palaver_balancer::BalancerError>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Chromium's path; without one the test says why and is skipped, unless
/// `PALAVER_CI` is set: then it fails.
fn chromium() -> Option<PathBuf> {
    let exe = cdp::find_chromium();
    if exe.is_none() {
        let why = "no Chromium on PATH (apt-get install chromium, or set PALAVER_CHROMIUM)";
        assert!(std::env::var_os("PALAVER_CI").is_none(), "PALAVER_CI is set, so a skipped browser test fails: {why}");
        eprintln!("skipping the browser test: {why}");
    }
    exe
}

fn screenshot_dir() -> PathBuf {
    // target/debug/palaver → target/screenshots
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_palaver"));
    exe.parent().and_then(|p| p.parent()).map(|t| t.join("screenshots")).unwrap_or_else(|| "screenshots".into())
}

fn password(name: &str) -> String {
    format!("pw-of-{name}-in-the-browser")
}

// ---- actions and conditions, in the page's terms ------------------------------

/// The seq of the newest message from `user` on `page`'s screen.
async fn last_seq_from(page: &Page, user: &str) -> Result<String> {
    let seq = page
        .eval(&format!("[...document.querySelectorAll({})].pop().dataset.seq", js(&item("message", "data-from", user))))
        .await?;
    Ok(seq.as_str().context("a seq")?.to_string())
}

/// Registers `name` with the mouse and waits until the page is logged in.
async fn register(page: &Page, name: &str) -> Result<Value> {
    page.fill(&test("username"), name).await?;
    page.fill(&test("password"), &password(name)).await?;
    page.click(&test("register")).await?;
    logged_in(page, name).await
}

async fn logged_in(page: &Page, name: &str) -> Result<Value> {
    page.wait(&format!("{name} to be logged in"), &format!("{} && {}", visible(&test("logout")), text_has("#me", name)))
        .await
}

async fn create_room(page: &Page, room: &str, visibility: &str) -> Result<()> {
    page.fill(&test("new-room-name"), room).await?;
    page.eval(&format!("document.getElementById('new-room-visibility').value = {visibility:?}")).await?;
    page.click(&test("new-room-create")).await?;
    page.wait(&format!("{room} created"), &text_is("#room-title", room)).await.map(drop)
}

async fn say(page: &Page, text: &str) -> Result<()> {
    page.fill(&test("composer"), text).await?;
    page.press("Enter").await
}

async fn shows(page: &Page, text: &str) -> Result<Value> {
    page.wait(&format!("{text:?} on screen"), &format!("{} > 0", count_with_text(text))).await
}

async fn online(page: &Page, user: &str, online: bool) -> Result<Value> {
    let sel = format!("{}[data-online=\"{online}\"]", item("presence", "data-username", user));
    page.wait(&format!("{user} shown {}", if online { "online" } else { "offline" }), &count(&sel)).await
}

fn test(name: &str) -> String {
    format!("[data-test=\"{name}\"]")
}

/// Empties an input.
async fn clear(page: &Page, selector: &str) -> Result<()> {
    page.eval(&format!("(document.querySelector({}).value = '', true)", js(selector))).await?;
    Ok(())
}

fn item(name: &str, attr: &str, value: &str) -> String {
    format!("[data-test=\"{name}\"][{attr}=\"{value}\"]")
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn count(selector: &str) -> String {
    format!("document.querySelectorAll({}).length", js(selector))
}

fn visible(selector: &str) -> String {
    format!("(document.querySelector({})?.offsetParent ?? null) !== null", js(selector))
}

fn text_has(selector: &str, text: &str) -> String {
    format!("(document.querySelector({})?.textContent ?? '').includes({})", js(selector), js(text))
}

fn text_is(selector: &str, text: &str) -> String {
    format!("(document.querySelector({})?.textContent ?? '').trim() === {}", js(selector), js(text))
}

fn count_with_text(text: &str) -> String {
    format!(
        "[...document.querySelectorAll({})].filter(m => m.textContent.includes({})).length",
        js(&test("message")),
        js(text)
    )
}

fn seqs_on_screen() -> String {
    format!("[...document.querySelectorAll({})].map(m => Number(m.dataset.seq))", js(&test("message")))
}

fn nothing_pending() -> &'static str {
    "document.getElementById('pending').children.length === 0"
}
