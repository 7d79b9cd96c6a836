//! `SPACELIFT_TOKEN`: `Token::decode` never panics, and a token that decodes re-encodes
//! to the same fields (`encode` then `decode` is the identity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::token::Token;

fuzz_target!(|text: &str| {
    if let Ok(token) = Token::decode("SPACELIFT_TOKEN", text) {
        let again = Token::decode("SPACELIFT_TOKEN", &token.encode())
            .expect("a decoded token re-encodes to a valid token");
        assert_eq!(again, token, "round trip changed the token");
        // What the launcher derives from it must not panic either.
        let _ = token.broker_host_port();
        let _ = token.namespace();
    }
});
