//! Reading parameters from the kernel command line (`/proc/cmdline`).

/// Splits a command line into words the way the kernel does: whitespace separates words
/// except inside double quotes, and the quotes themselves are removed.
fn words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The value of `key=value` on the kernel command line; the last occurrence wins, as in
/// the kernel. Words after `--` belong to init's argv and are not parameters.
pub fn param(cmdline: &str, key: &str) -> Option<String> {
    words(cmdline)
        .into_iter()
        .take_while(|w| w != "--")
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
        .last()
}

/// Whether `name` is usable as a hostname: 1 to 64 bytes of letters, digits, `-` and `.`
/// (Kubernetes pod hostnames are DNS labels; the kernel limit is 64).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_params() {
        let line = "console=ttyS0 reboot=k vmlet.hostname=web-0 panic=1\n";
        assert_eq!(param(line, "vmlet.hostname").as_deref(), Some("web-0"));
        assert_eq!(param(line, "reboot").as_deref(), Some("k"));
        assert_eq!(param(line, "vmlet.host"), None);
        assert_eq!(param(line, "ttyS0"), None);
        assert_eq!(param("", "a"), None);
    }

    #[test]
    fn last_occurrence_wins_and_stops_at_dashes() {
        assert_eq!(param("a=1 a=2", "a").as_deref(), Some("2"));
        assert_eq!(param("a=1 -- a=2", "a").as_deref(), Some("1"));
        assert_eq!(param("a= b", "a").as_deref(), Some(""));
        assert_eq!(param("a=x=y", "a").as_deref(), Some("x=y"));
    }

    #[test]
    fn handles_quotes() {
        assert_eq!(param(r#"x="a b" y=1"#, "x").as_deref(), Some("a b"));
        assert_eq!(param(r#""x=a b" y=1"#, "x").as_deref(), Some("a b"));
        assert_eq!(
            param(r#"x="unterminated"#, "x").as_deref(),
            Some("unterminated")
        );
    }

    #[test]
    fn validates_hostnames() {
        assert!(valid_hostname("web-0.default"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname("a/b"));
        assert!(!valid_hostname(&"a".repeat(65)));
        assert!(valid_hostname(&"a".repeat(64)));
    }
}
