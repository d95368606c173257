//! The passwd/group/shadow/shells parsers: any text must parse or be refused with an error,
//! never panic; what parses has names without field separators.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/system/etc.rs"]
#[allow(dead_code)]
mod etc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(users) = etc::parse_passwd(text) {
        for user in users {
            assert!(!user.name.is_empty() && !user.name.contains([':', '\n']));
        }
    }
    if let Ok(groups) = etc::parse_group(text) {
        for group in groups {
            assert!(group.members.iter().all(|m| !m.is_empty() && !m.contains([',', ':', '\n'])));
        }
    }
    let _ = etc::parse_shadow(text);
    for shell in etc::parse_shells(text) {
        assert!(shell.starts_with('/'));
    }
});
