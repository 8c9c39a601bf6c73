//! Ethernet MAC addresses as the configuration writes them (`02:00:00:00:00:01`).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six `:`-separated hex bytes.
    #[error("{0:?} is not a MAC address (expected six hex bytes like 02:00:00:00:00:01)")]
    Syntax(String),
    /// A multicast (or broadcast) address: a NIC needs a unicast one.
    #[error("{0} is a multicast address (the low bit of the first byte must be 0)")]
    Multicast(MacAddr),
    /// All zeros.
    #[error("00:00:00:00:00:00 is not a usable address")]
    Zero,
}

impl MacAddr {
    /// A random locally administered unicast address (first byte `x2`, `x6`, `xa` or
    /// `xe`), from the process's randomly seeded hasher keys.
    pub fn random_local() -> MacAddr {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
        let bytes = h.finish().to_le_bytes();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        mac[0] = (mac[0] & 0xfc) | 0x02;
        MacAddr(mac)
    }

    /// Checks that the address can be a NIC's: unicast and not all zeros.
    pub fn check_unicast(self) -> Result<MacAddr, MacError> {
        if self.0 == [0; 6] {
            Err(MacError::Zero)
        } else if self.0[0] & 1 != 0 {
            Err(MacError::Multicast(self))
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
