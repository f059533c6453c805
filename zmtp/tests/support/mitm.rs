//! A man in the middle for the CURVE tests: a TCP relay between a real client and a server
//! that passes everything through, except that it can alter one frame the client sends after
//! the handshake: flip an octet of it (tampering) or send it twice (a replay). The relay
//! parses only ZMTP framing (RFC 23), never the cryptography.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to the client's frame number `index` (counted after the greeting, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alter {
    /// Flip the last octet of the frame (inside the box's ciphertext).
    Tamper,
    /// Send the frame again right after itself.
    Replay,
}

/// Listens on 127.0.0.1 (an ephemeral port) and relays the first connection to `target`
/// (`host:port`). Returns the `tcp://` endpoint to give the client.
pub async fn relay(target: String, index: usize, alter: Alter) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let ep = format!("tcp://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(server) = TcpStream::connect(&target).await else {
            return;
        };
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
        });
        let mut greeting = [0u8; 64];
        if cr.read_exact(&mut greeting).await.is_err() || sw.write_all(&greeting).await.is_err() {
            return;
        }
        let mut n = 0usize;
        loop {
            let mut flags = [0u8; 1];
            if cr.read_exact(&mut flags).await.is_err() {
                break;
            }
            let mut header = vec![flags[0]];
            let size = if flags[0] & super::raw::LONG != 0 {
                let mut s = [0u8; 8];
                if cr.read_exact(&mut s).await.is_err() {
                    break;
                }
                header.extend_from_slice(&s);
                u64::from_be_bytes(s) as usize
            } else {
                let mut s = [0u8; 1];
                if cr.read_exact(&mut s).await.is_err() {
                    break;
                }
                header.push(s[0]);
                usize::from(s[0])
            };
            let mut body = vec![0u8; size];
            if cr.read_exact(&mut body).await.is_err() {
                break;
            }
            let mut frame = header;
            frame.extend_from_slice(&body);
            let copies = if n == index {
                match alter {
                    Alter::Tamper => {
                        if let Some(last) = frame.last_mut() {
                            *last ^= 0x01;
                        }
                        1
                    }
                    Alter::Replay => 2,
                }
            } else {
                1
            };
            for _ in 0..copies {
                if sw.write_all(&frame).await.is_err() {
                    return;
                }
            }
            n += 1;
        }
        let _ = sw.shutdown().await;
    });
    ep
}
