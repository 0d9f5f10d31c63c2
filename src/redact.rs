//! Text that reaches the logs from outside forewarn's own code: a mail
//! server's reply, a CEL evaluation error. Such text may quote customer
//! data (a server echoes the refused address; CEL prints the value it could
//! not compare), and logs must never hold addresses or payloads. These
//! functions mask it at the point where the text is made, so every later
//! reader (logs, dead letters, the admin API) gets the masked form.

/// Replaces anything shaped like an email address (`local@domain`) with
/// `[address]`.
pub fn addresses(text: &str) -> String {
    let bytes = text.as_bytes();
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-!#$&'*/=?^`{|}~".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut out = String::with_capacity(text.len());
    // `copied`: bytes of `text` already in `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > copied && local(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < bytes.len() && domain(bytes[end]) {
            end += 1;
        }
        // A trailing dot ends the sentence, not the domain.
        while end > i + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        if start < i && end > i + 1 {
            out.push_str(&text[copied..start]);
            out.push_str("[address]");
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// [`addresses`], and the contents of every double-quoted string replaced
/// by `…` (CEL prints runtime values as `String("…")`). Type names, keys
/// outside quotes and the shape of the message stay, so it still says
/// what went wrong.
pub fn values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let mut escaped = false;
        let mut closed = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        out.push('…');
        if closed {
            out.push('"');
        }
    }
    addresses(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_in_server_replies_are_masked() {
        assert_eq!(
            addresses("permanent error (550): 5.1.1 <ana.lima+orders@mail.example.com>: Recipient address rejected."),
            "permanent error (550): 5.1.1 <[address]>: Recipient address rejected."
        );
        assert_eq!(addresses("to bob@example.com."), "to [address].");
        assert_eq!(addresses("a@b and c@d"), "[address] and [address]");
        // Not addresses: a lone @, an @ at either end.
        for s in ["no address here", "@", "user@", "@host", "a @ b"] {
            assert_eq!(addresses(s), s);
        }
    }

    #[test]
    fn cel_values_are_masked_but_the_error_still_reads() {
        assert_eq!(
            values(r#"Unsupported binary operator 'add': String("Ana Lima"), Int(3)"#),
            r#"Unsupported binary operator 'add': String("…"), Int(3)"#
        );
        assert_eq!(
            values(r#"String("say \"hi\" to ana@x.io") can not be compared"#),
            r#"String("…") can not be compared"#
        );
        assert_eq!(values(r#"unterminated "abc"#), r#"unterminated "…"#);
        assert_eq!(values("No such key: email"), "No such key: email");
    }

    proptest! {
        /// Whatever surrounds it, an address never survives either function.
        #[test]
        fn no_address_survives(
            before in "[ -~]{0,20}",
            local in "[a-z0-9._+-]{1,12}",
            host in "[a-z0-9-]{1,10}",
            after in "[ -~]{0,20}",
        ) {
            let addr = format!("{local}@{host}.example");
            let text = format!("{before}{addr}{after}");
            prop_assert!(!addresses(&text).contains(&addr));
            prop_assert!(!values(&text).contains(&addr));
        }
    }
}
