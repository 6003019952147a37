//! A destination's identity: `host:port`, or `host:port=instance` as carbon-c-relay writes it.
//!
//! The identity is the destination's name everywhere: the key of its counters in `/stats` and self-metrics, the
//! `destination` field of its log lines, and later its spool directory and the key a config reload matches queues
//! by. It is parsed once, when the config is validated, and written back in one canonical form, so two spellings of
//! one destination cannot become two queues. The instance is a label (carbon's `DESTINATIONS = host:port:instance`
//! names a carbon-cache instance with it, and consistent hashing keys on it); it is not sent anywhere.
//!
//! Invariants: an identity always has a host and a port in 1..=65535, and its instance, if any, is non-empty and
//! holds no `:`, `=`, whitespace or control bytes, so the canonical form parses back to the same identity.

use std::fmt;

/// A destination's parsed identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    host: String,
    port: u16,
    instance: Option<String>,
}

impl Identity {
    /// Parses `host:port`, `[v6]:port`, and either followed by `=instance`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Identity, String> {
        let (address, instance) = match text.split_once('=') {
            Some((address, instance)) => (address, Some(instance)),
            None => (text, None),
        };
        let Some((host, port)) = crate::config::split_host_port(address) else {
            return Err(format!(
                "{text:?} is not host:port[=instance] with a port in 1..=65535"
            ));
        };
        if let Some(instance) = instance {
            let is_label_byte = |byte: u8| byte.is_ascii_graphic() && byte != b':' && byte != b'=';
            if instance.is_empty() || !instance.bytes().all(is_label_byte) {
                return Err(format!(
                    "{text:?}: the instance after '=' must be printable ASCII without ':', '=' or spaces"
                ));
            }
        }
        Ok(Identity {
            host: host.to_string(),
            port,
            instance: instance.map(str::to_string),
        })
    }

    /// The host name or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance label, if one was given.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The address to resolve and connect to: `host:port`, with an IPv6 literal in brackets.
    pub fn connect_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.connect_address())?;
        if let Some(instance) = &self.instance {
            write!(formatter, "={instance}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<&str, &str>) {
        let parsed = Identity::parse(text).map(|identity| identity.to_string());
        match (parsed, expected) {
            (Ok(canonical), Ok(expected)) => assert_eq!(canonical, expected, "{text:?}"),
            (Err(message), Err(needle)) => assert!(message.contains(needle), "{text:?}: {message}"),
            (parsed, expected) => panic!("{text:?}: got {parsed:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn identities_parse_to_one_canonical_form() {
        check("10.0.0.1:2003", Ok("10.0.0.1:2003"));
        check("cache-a:2004=a", Ok("cache-a:2004=a"));
        check("[::1]:2003", Ok("[::1]:2003"));
        check("[::1]:2003=b", Ok("[::1]:2003=b"));
        check("carbon:2003=cache.1_x", Ok("carbon:2003=cache.1_x"));
    }

    #[test]
    fn malformed_identities_say_what_is_wrong() {
        check("carbon", Err("not host:port"));
        check("carbon:0", Err("not host:port"));
        check(":2003=a", Err("not host:port"));
        check("carbon:2003=", Err("instance"));
        check("carbon:2003=a b", Err("instance"));
        check("carbon:2003=a=b", Err("instance"));
    }

    #[test]
    fn the_connect_address_leaves_the_instance_out() {
        let identity = Identity::parse("[::1]:2004=b").unwrap();
        assert_eq!(identity.connect_address(), "[::1]:2004");
        assert_eq!(identity.instance(), Some("b"));
        assert_eq!(identity.host(), "::1");
        assert_eq!(identity.port(), 2004);
    }
}
