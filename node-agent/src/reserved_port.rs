//! The agent's own ports on the bridge: the tunnel `sy-tun0`, the gateway
//! `sy-gw0` and the uplinks, each created with the ofport that
//! `switchyard_pipeline::ofport` reserves for it. The tunnel's and the
//! gateway's numbers are pinned (the flows hard-code them); an uplink's is
//! only asked for (its flows use the number vswitchd reports).
//!
//! One sequence for all of them ([`ReservedPort::ensure`]): remove the port
//! if the caller found it different from what it wants, add it with
//! `ofport_request` (a port that already exists counts as added), wait for
//! vswitchd to give it an ofport, and check a pinned number.

use std::fmt;
use std::time::Duration;

use switchyard_ovs::ovsdb::{self, PortSpec};

/// How long to wait for vswitchd to give a port its ofport.
pub const OFPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The ofport a reserved port asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ofport {
    /// The flows hard-code this number: vswitchd giving another is an error.
    Pinned(u32),
    /// Asked for; any number vswitchd gives is used (a port kept from an
    /// older configuration may hold another).
    Requested(u32),
}

impl Ofport {
    fn number(self) -> u32 {
        match self {
            Ofport::Pinned(n) | Ofport::Requested(n) => n,
        }
    }
}

/// What the caller found in OVSDB under the port's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No such port: it is added.
    Nothing,
    /// The port as wanted: it is kept.
    AsWanted,
    /// A port that differs from the wanted one: it is removed and added again.
    Different,
}

impl Found {
    /// [`Found::Nothing`] without a row, else whether `as_wanted` holds for it.
    pub fn of<T>(existing: Option<&T>, as_wanted: impl FnOnce(&T) -> bool) -> Found {
        match existing {
            None => Found::Nothing,
            Some(row) if as_wanted(row) => Found::AsWanted,
            Some(_) => Found::Different,
        }
    }
}

/// A step of setting up a reserved port, as error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading what OVSDB holds under the port's name.
    Read,
    /// Removing a port that differs from the wanted one.
    Remove,
    /// Adding the port to the bridge.
    Add,
    /// Waiting for vswitchd to give the port an ofport.
    WaitOfport {
        /// The interface is a device of the node (an uplink's NIC), not one
        /// vswitchd creates: the usual cause of a failure is its absence.
        system_device: bool,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Read => "reading it from OVSDB",
            Step::Remove => "removing the old port",
            Step::Add => "adding it to the bridge",
            Step::WaitOfport {
                system_device: false,
            } => "waiting for its ofport",
            Step::WaitOfport {
                system_device: true,
            } => "waiting for its ofport (does the interface exist on the node?)",
        })
    }
}

/// Why a reserved port could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReservedPortError {
    /// An OVSDB operation failed.
    #[error("{role} {port}: {step}: {source}")]
    Ovsdb {
        /// What the port is for ("gateway port", "tunnel port", "uplink").
        role: &'static str,
        /// Its name.
        port: String,
        /// What was done.
        step: Step,
        /// The error.
        source: ovsdb::Error,
    },
    /// vswitchd gave a pinned port another ofport than requested.
    #[error(
        "{role} {port} has ofport {got}, expected {expected}; remove the port (ovs-vsctl del-port {port}) and restart the agent"
    )]
    WrongOfport {
        /// What the port is for.
        role: &'static str,
        /// Its name.
        port: String,
        /// What vswitchd gave it.
        got: u16,
        /// What the pipeline needs.
        expected: u32,
    },
}

/// One of the agent's own ports.
#[derive(Debug, Clone)]
pub struct ReservedPort {
    /// What it is for, in messages: "gateway port", "tunnel port", "uplink".
    pub role: &'static str,
    /// The port as it is created; its `ofport_request` comes from `ofport`.
    pub spec: PortSpec,
    /// The ofport it asks for.
    pub ofport: Ofport,
}

impl ReservedPort {
    /// The error of `step` on this port.
    pub fn error(&self, step: Step) -> impl FnOnce(ovsdb::Error) -> ReservedPortError + use<> {
        let (role, port) = (self.role, self.spec.name.clone());
        move |source| ReservedPortError::Ovsdb {
            role,
            port,
            step,
            source,
        }
    }

    /// Makes the port exist on `bridge`, given what the caller `found`
    /// under its name, and returns the ofport vswitchd gave it (for a
    /// [`Ofport::Pinned`] port, that number or an error).
    pub async fn ensure(
        &self,
        ovsdb: &ovsdb::Client,
        bridge: &str,
        found: Found,
    ) -> Result<u32, ReservedPortError> {
        let name = self.spec.name.as_str();
        if found == Found::Different {
            match ovsdb.remove_port(name).await {
                Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
                Err(e) => return Err(self.error(Step::Remove)(e)),
            }
        }
        if found != Found::AsWanted {
            let spec = PortSpec {
                ofport_request: u16::try_from(self.ofport.number()).ok(),
                ..self.spec.clone()
            };
            match ovsdb.add_port(bridge, &spec).await {
                Ok(_) | Err(ovsdb::Error::PortExists(_)) => {}
                Err(e) => return Err(self.error(Step::Add)(e)),
            }
        }
        let got = ovsdb
            .interface_ofport(name, OFPORT_TIMEOUT)
            .await
            .map_err(self.error(Step::WaitOfport {
                system_device: self.spec.interface_type.is_none(),
            }))?;
        match self.ofport {
            Ofport::Pinned(expected) if u32::from(got) != expected => {
                Err(ReservedPortError::WrongOfport {
                    role: self.role,
                    port: name.to_string(),
                    got,
                    expected,
                })
            }
            _ => Ok(u32::from(got)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_of_a_row() {
        assert_eq!(Found::of(None::<&u8>, |_| true), Found::Nothing);
        assert_eq!(Found::of(Some(&1), |v| *v == 1), Found::AsWanted);
        assert_eq!(Found::of(Some(&2), |v| *v == 1), Found::Different);
    }

    #[test]
    fn errors_name_the_port_the_numbers_and_what_to_do() {
        let wrong = ReservedPortError::WrongOfport {
            role: "gateway port",
            port: "sy-gw0".into(),
            got: 5,
            expected: 2,
        };
        assert_eq!(
            wrong.to_string(),
            "gateway port sy-gw0 has ofport 5, expected 2; remove the port (ovs-vsctl del-port sy-gw0) and restart the agent"
        );
        let uplink = ReservedPort {
            role: "uplink",
            spec: PortSpec::new("trunk0"),
            ofport: Ofport::Requested(3),
        };
        let e = uplink.error(Step::WaitOfport {
            system_device: true,
        })(ovsdb::Error::InterfaceNotFound("trunk0".into()));
        assert!(
            e.to_string().starts_with(
                "uplink trunk0: waiting for its ofport (does the interface exist on the node?): "
            ),
            "{e}"
        );
    }
}
