//! Container output: the frames bollard demultiplexes from Docker's log stream, cut into
//! lines by the launcher's `split_lines`. Per stream: no piece holds a `\n`; with valid
//! UTF-8, every piece is at most `MAX_LINE` bytes, and the pieces hold exactly the input
//! (concatenated they give the input without its line breaks); an error ends the stream
//! after the lines before it. Frames may repeat a chunk, to reach lines past `MAX_LINE`.
#![no_main]

use bollard::container::LogOutput;
use bytes::Bytes;
use futures::executor::block_on;
use futures::StreamExt;
use launcher::docker::{split_lines, MAX_LINE};
use launcher::ports::RuntimeError;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use protocol::api::LogStream;

#[derive(Arbitrary, Debug)]
enum Frame {
    Stdout(Vec<u8>, u8),
    Stderr(Vec<u8>, u8),
    Console(Vec<u8>, u8),
    Stdin(Vec<u8>),
    /// A long run of one byte (a line past MAX_LINE costs a few input bytes).
    Run(bool, u8, u16),
    /// The same, ended by a line break in the same frame.
    RunLine(bool, u8, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    frames: Vec<Frame>,
    fail_at_end: bool,
}

fn repeat(chunk: &[u8], times: u8) -> Vec<u8> {
    chunk.repeat(usize::from(times % 8) + 1)
}

fn strip_breaks(b: &[u8]) -> Vec<u8> {
    b.iter()
        .copied()
        .filter(|&c| c != b'\n' && c != b'\r')
        .collect()
}

fuzz_target!(|input: Input| {
    let mut sent = [Vec::new(), Vec::new()]; // stdout, stderr
    let mut items: Vec<Result<LogOutput, RuntimeError>> = Vec::new();
    for f in &input.frames {
        let (out, bytes) = match f {
            Frame::Stdout(b, n) => (0, repeat(b, *n)),
            Frame::Stderr(b, n) => (1, repeat(b, *n)),
            Frame::Console(b, n) => (0, repeat(b, *n)),
            Frame::Stdin(b) => {
                items.push(Ok(LogOutput::StdIn {
                    message: Bytes::from(b.clone()),
                }));
                continue;
            }
            Frame::Run(err, byte, len) => (usize::from(*err), vec![*byte; usize::from(*len) * 2]),
            Frame::RunLine(err, byte, len) => {
                let mut b = vec![*byte; usize::from(*len) * 2];
                b.push(b'\n');
                (usize::from(*err), b)
            }
        };
        sent[out].extend_from_slice(&bytes);
        let message = Bytes::from(bytes);
        items.push(Ok(match f {
            Frame::Stderr(..) | Frame::Run(true, ..) | Frame::RunLine(true, ..) => {
                LogOutput::StdErr { message }
            }
            Frame::Console(..) => LogOutput::Console { message },
            _ => LogOutput::StdOut { message },
        }));
    }
    if input.fail_at_end {
        items.push(Err(RuntimeError::Api("boom".into())));
    }

    let results: Vec<_> = block_on(split_lines(futures::stream::iter(items)).collect::<Vec<_>>());
    let mut got = [Vec::new(), Vec::new()];
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(line) => {
                assert!(!line.text.contains('\n'), "a piece holds a line break");
                let out = match line.stream {
                    LogStream::Stderr => 1,
                    _ => 0,
                };
                got[out].push(line.text.clone());
            }
            Err(_) => {
                assert!(
                    input.fail_at_end && i == results.len() - 1,
                    "error out of place"
                );
            }
        }
    }
    if input.fail_at_end {
        // The partial lines still buffered are not flushed after an error.
        return;
    }
    for out in 0..2 {
        if std::str::from_utf8(&sent[out]).is_err() {
            continue;
        }
        for piece in &got[out] {
            assert!(
                piece.len() <= MAX_LINE,
                "a piece of {} bytes (MAX_LINE {MAX_LINE})",
                piece.len()
            );
        }
        let joined: Vec<u8> = got[out].concat().into_bytes();
        assert_eq!(
            strip_breaks(&joined),
            strip_breaks(&sent[out]),
            "stream {out}: the pieces do not hold exactly the input"
        );
    }
});
