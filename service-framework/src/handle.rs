//! Typed handles: a declared connection or state as a value that carries its wire name, its
//! types and its typed options.
//!
//! Declare each handle once (a `const` is simplest), give it to [`ServiceDef`] and use the
//! same value in handlers and `main`:
//!
//! ```
//! use service_framework::prelude::*;
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Sum { total: i64 }
//!
//! const SUMS: Publisher<Sum> = Publisher::new("sums_out").topic("sums");
//!
//! fn service() -> ServiceDef {
//!     ServiceDef::new("summer")
//!         .publisher(SUMS)
//!         .main(|ctx: Ctx| async move {
//!             ctx.publish(&SUMS, &Sum { total: 3 }).await?;
//!             Ok(())
//!         })
//! }
//! # let _ = service();
//! ```
//!
//! Sending the wrong type, or on the wrong kind of connection, does not compile. The wire
//! name is what addresses.json and Python peers see; nothing on the wire changes. A name
//! given as a plain string (`.replyer("reply", ...)`) makes a handle with default options
//! whose types come from the handler: the dynamic escape hatch (`ctx.send(name, &json)`)
//! stays for code that only knows names at run time.
//!
//! [`ServiceDef`]: crate::ServiceDef

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Serialize;
use serde_json::{Map, Value};

mod sealed {
    pub trait Sealed {}
}

fn to_creation<O: Serialize>(opts: &O) -> Map<String, Value> {
    match serde_json::to_value(opts) {
        Ok(Value::Object(m)) => m,
        // Options structs are plain records of numbers, flags and strings.
        _ => Map::new(),
    }
}

macro_rules! handle {
    (
        $(#[$doc:meta])*
        $name:ident<$($t:ident),+>, $opts:ident
    ) => {
        $(#[$doc])*
        pub struct $name<$($t),+> {
            name: Cow<'static, str>,
            /// The typed options (the original's creation arguments).
            pub options: $opts,
            _types: PhantomData<fn($($t),+)>,
        }

        impl<$($t),+> $name<$($t),+> {
            /// A handle for wire name `name`, with default options.
            pub const fn new(name: &'static str) -> Self {
                Self::with_options(name, $opts::DEFAULT)
            }

            /// A handle for wire name `name` with these options.
            pub const fn with_options(name: &'static str, options: $opts) -> Self {
                $name { name: Cow::Borrowed(name), options, _types: PhantomData }
            }

            /// A handle whose name is known only at run time.
            pub fn named(name: impl Into<String>) -> Self {
                $name { name: Cow::Owned(name.into()), options: $opts::DEFAULT, _types: PhantomData }
            }

            /// The wire name (the key in addresses.json).
            pub fn name(&self) -> &str {
                &self.name
            }

            pub(crate) fn creation(&self) -> Map<String, Value> {
                to_creation(&self.options)
            }
        }

        impl<$($t),+> Clone for $name<$($t),+> {
            fn clone(&self) -> Self {
                $name { name: self.name.clone(), options: self.options.clone(), _types: PhantomData }
            }
        }

        impl<$($t),+> std::fmt::Debug for $name<$($t),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("name", &self.name)
                    .field("options", &self.options)
                    .finish()
            }
        }

        impl<$($t),+> From<&str> for $name<$($t),+> {
            fn from(name: &str) -> Self {
                Self::named(name)
            }
        }

        impl<$($t),+> From<&$name<$($t),+>> for $name<$($t),+> {
            fn from(h: &$name<$($t),+>) -> Self {
                h.clone()
            }
        }

        impl<$($t),+> sealed::Sealed for $name<$($t),+> {}
    };
}

macro_rules! options {
    (
        $(#[$doc:meta])*
        $opts:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[non_exhaustive]
        pub struct $opts {
            $( $(#[$fdoc])* #[serde(skip_serializing_if = "skip")] pub $field: $ty, )*
        }

        impl $opts {
            /// The defaults.
            pub const DEFAULT: $opts = $opts { $( $field: $default, )* };
        }

        impl Default for $opts {
            fn default() -> Self {
                Self::DEFAULT
            }
        }
    };
}

/// Fields left at their "unset" value are not written as creation arguments.
fn skip<T: Skip>(v: &T) -> bool {
    v.is_unset()
}

trait Skip {
    fn is_unset(&self) -> bool;
}
impl<T> Skip for Option<T> {
    fn is_unset(&self) -> bool {
        self.is_none()
    }
}
impl Skip for bool {
    fn is_unset(&self) -> bool {
        !*self
    }
}
impl Skip for &str {
    fn is_unset(&self) -> bool {
        false
    }
}

options! {
    /// A replyer's options.
    ReplyerOpts {
        /// The largest request accepted, in bytes.
        max_message_bytes: Option<u64> = None,
        /// Requests handled at once; more wait.
        max_concurrency: Option<u64> = None,
    }
}
options! {
    /// A subscriber's options.
    SubscriberOpts {
        /// The topic (empty: everything the publisher sends).
        topic: &'static str = "",
        /// Bind instead of connecting (the publisher connects).
        is_binder: bool = false,
        /// Lossless stream: credits granted to the publisher at a time.
        credit_window: Option<u64> = None,
        /// The largest message accepted, in bytes.
        max_message_bytes: Option<u64> = None,
    }
}
options! {
    /// A puller's options.
    PullerOpts {
        /// Bind instead of connecting.
        is_binder: bool = false,
        /// The largest message accepted, in bytes.
        max_message_bytes: Option<u64> = None,
        /// At-least-once: each message is acknowledged after its handler returns (the
        /// pushers must be acked too).
        acked: bool = false,
        /// Handlers run at once (default 1: one at a time, in order).
        concurrency: Option<u64> = None,
    }
}
options! {
    /// A requester's options.
    RequesterOpts {
        /// Seconds to wait for each reply.
        timeout_s: Option<f64> = None,
        /// Retries after a timeout.
        retries: Option<u64> = None,
        /// The largest reply accepted, in bytes.
        max_message_bytes: Option<u64> = None,
    }
}
options! {
    /// A publisher's options.
    PublisherOpts {
        /// The topic (empty: none).
        topic: &'static str = "",
        /// Connect to a bus proxy's XSUB side instead of binding.
        is_x_pub: bool = false,
        /// Lossless stream: wait for subscribers' credits.
        credit_window: Option<u64> = None,
        /// Seconds a lossless publish waits for credit.
        credit_stall_timeout_s: Option<f64> = None,
        /// Seconds to wait after creation (the original's slow-joiner pause).
        wait_after_creation_s: Option<f64> = None,
    }
}
options! {
    /// A pusher's options.
    PusherOpts {
        /// Bind instead of connecting.
        is_binder: bool = false,
        /// Seconds a push waits while every puller is full (acked: for the ack too).
        send_timeout_s: Option<f64> = None,
        /// At-least-once: a push returns once a puller's handler finished with it, and
        /// what a lost puller had not acknowledged is sent again (the pullers must be acked).
        acked: bool = false,
        /// Acked: seconds after which an unacknowledged message is sent again (default 30).
        ack_timeout_s: Option<f64> = None,
        /// Acked: the most messages unacknowledged at once (default 1000).
        window: Option<u64> = None,
    }
}
options! {
    /// An external target's options (none yet).
    ExternalOpts {}
}
options! {
    /// An in-state's options.
    StateInOpts {
        /// The topic (empty: the state's name).
        topic: &'static str = "",
        /// Bind instead of connecting.
        is_binder: bool = false,
        /// Seconds to wait for a snapshot before asking again.
        resync_timeout_s: Option<f64> = None,
    }
}
options! {
    /// An out-state's options.
    StateOutOpts {
        /// The topic (empty: the state's name).
        topic: &'static str = "",
        /// Connect to a bus proxy's XSUB side instead of binding.
        is_x_pub: bool = false,
        /// Seconds to wait after creation.
        wait_after_creation_s: Option<f64> = None,
        /// Seconds between unsolicited snapshots (delta states).
        snapshot_interval_s: Option<f64> = None,
    }
}

handle! {
    /// In: a replyer taking `A` and answering `R`.
    Replyer<A, R>, ReplyerOpts
}
handle! {
    /// In: a subscriber receiving `A`.
    Subscriber<A>, SubscriberOpts
}
handle! {
    /// In: a puller receiving pushed `A`.
    Puller<A>, PullerOpts
}
handle! {
    /// Out: a requester sending `A` and expecting `R`: `ctx.request(&handle, &args)`.
    Requester<A, R>, RequesterOpts
}
handle! {
    /// Out: a publisher of `A`: `ctx.publish(&handle, &value)`.
    Publisher<A>, PublisherOpts
}
handle! {
    /// Out: a pusher of `A`: `ctx.push(&handle, &value)`.
    Pusher<A>, PusherOpts
}
handle! {
    /// Out: an external target (a local async fn) taking `A` and answering `R`:
    /// `ctx.request(&handle, &args)`.
    ExternalTarget<A, R>, ExternalOpts
}
handle! {
    /// In: the last whole state a `full_update_out` published: `ctx.state(&handle)`.
    FullStateIn<T>, StateInOpts
}
handle! {
    /// In: a state following a `delta_update_out`: `ctx.state(&handle)`.
    DeltaStateIn<T>, StateInOpts
}
handle! {
    /// Out: a state published whole: `ctx.set_state(&handle, &value)`.
    FullStateOut<T>, StateOutOpts
}
handle! {
    /// Out: a state published as numbered deltas: `ctx.update_state(&handle, &changes)` and
    /// `ctx.snapshot_state(&handle, &whole)`.
    DeltaStateOut<T>, StateOutOpts
}

macro_rules! const_setters {
    ($name:ident<$($t:ident),+> { $( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)? }) => {
        impl<$($t),+> $name<$($t),+> {
            $(
                $(#[$doc])*
                pub const fn $field(mut self, value: $ty) -> Self {
                    self.options.$field = value;
                    self
                }
            )*
        }
    };
}

const_setters!(Replyer<A, R> {
    /// Sets `max_message_bytes`.
    max_message_bytes: Option<u64>,
    /// Sets `max_concurrency`.
    max_concurrency: Option<u64>,
});
const_setters!(Subscriber<A> {
    /// Sets the topic.
    topic: &'static str,
    /// Binds instead of connecting.
    is_binder: bool,
    /// Makes the stream lossless with this credit window.
    credit_window: Option<u64>,
    /// Sets `max_message_bytes`.
    max_message_bytes: Option<u64>,
});
const_setters!(Puller<A> {
    /// Binds instead of connecting.
    is_binder: bool,
    /// Sets `max_message_bytes`.
    max_message_bytes: Option<u64>,
    /// At-least-once: acknowledges each message after its handler returns.
    acked: bool,
    /// Handlers run at once (default 1: one at a time, in order).
    concurrency: Option<u64>,
});
const_setters!(Requester<A, R> {
    /// Seconds to wait for each reply.
    timeout_s: Option<f64>,
    /// Retries after a timeout.
    retries: Option<u64>,
    /// Sets `max_message_bytes`.
    max_message_bytes: Option<u64>,
});
const_setters!(Publisher<A> {
    /// Sets the topic.
    topic: &'static str,
    /// Connects to a bus proxy instead of binding.
    is_x_pub: bool,
    /// Makes the stream lossless with this credit window.
    credit_window: Option<u64>,
    /// Seconds a lossless publish waits for credit.
    credit_stall_timeout_s: Option<f64>,
    /// Seconds to wait after creation.
    wait_after_creation_s: Option<f64>,
});
const_setters!(Pusher<A> {
    /// Binds instead of connecting.
    is_binder: bool,
    /// Seconds a push waits while every puller is full (acked: for the ack too).
    send_timeout_s: Option<f64>,
    /// At-least-once: a push returns once a puller's handler finished with it.
    acked: bool,
    /// Acked: seconds after which an unacknowledged message is sent again.
    ack_timeout_s: Option<f64>,
    /// Acked: the most messages unacknowledged at once.
    window: Option<u64>,
});
const_setters!(FullStateIn<T> {
    /// Sets the topic.
    topic: &'static str,
    /// Binds instead of connecting.
    is_binder: bool,
});
const_setters!(DeltaStateIn<T> {
    /// Sets the topic.
    topic: &'static str,
    /// Binds instead of connecting.
    is_binder: bool,
    /// Seconds to wait for a snapshot before asking again.
    resync_timeout_s: Option<f64>,
});
const_setters!(FullStateOut<T> {
    /// Sets the topic.
    topic: &'static str,
    /// Connects to a bus proxy instead of binding.
    is_x_pub: bool,
    /// Seconds to wait after creation.
    wait_after_creation_s: Option<f64>,
});
const_setters!(DeltaStateOut<T> {
    /// Sets the topic.
    topic: &'static str,
    /// Connects to a bus proxy instead of binding.
    is_x_pub: bool,
    /// Seconds to wait after creation.
    wait_after_creation_s: Option<f64>,
    /// Seconds between unsolicited snapshots.
    snapshot_interval_s: Option<f64>,
});

/// What `ctx.request` can call: a [`Requester`] or an [`ExternalTarget`] taking `A` and
/// answering `R`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a requester or external target handle taking `{A}` and answering `{R}`",
    note = "declare `const H: Requester<{A}, {R}> = Requester::new(\"name\");` and pass `&H`; for names known only at run time use `ctx.send(name, &json)`"
)]
pub trait Calls<A, R>: sealed::Sealed {
    /// The wire name.
    fn conn_name(&self) -> &str;
}
impl<A, R> Calls<A, R> for Requester<A, R> {
    fn conn_name(&self) -> &str {
        self.name()
    }
}
impl<A, R> Calls<A, R> for ExternalTarget<A, R> {
    fn conn_name(&self) -> &str {
        self.name()
    }
}

/// What `ctx.state` can read: a [`FullStateIn`] or a [`DeltaStateIn`] of `T`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an in-state handle of `{T}`",
    note = "declare `const S: DeltaStateIn<{T}> = DeltaStateIn::new(\"name\");` and pass `&S`; for names known only at run time use `ctx.state_value(name)`"
)]
pub trait ReadsState<T>: sealed::Sealed {
    /// The wire name.
    fn state_name(&self) -> &str;
}
impl<T> ReadsState<T> for FullStateIn<T> {
    fn state_name(&self) -> &str {
        self.name()
    }
}
impl<T> ReadsState<T> for DeltaStateIn<T> {
    fn state_name(&self) -> &str {
        self.name()
    }
}

/// An out-state handle of `T`: a [`FullStateOut`] or a [`DeltaStateOut`] (what the testkit
/// follows for a test to read).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an out-state handle of `{T}`",
    note = "declare `const S: DeltaStateOut<{T}> = DeltaStateOut::new(\"name\");` and pass `&S`"
)]
pub trait WritesState<T>: sealed::Sealed {
    /// The wire name.
    fn state_name(&self) -> &str;
}
impl<T> WritesState<T> for FullStateOut<T> {
    fn state_name(&self) -> &str {
        self.name()
    }
}
impl<T> WritesState<T> for DeltaStateOut<T> {
    fn state_name(&self) -> &str {
        self.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_exactly_the_creation_arguments_set() {
        const P: Publisher<u8> = Publisher::new("sums_out")
            .topic("sums")
            .credit_window(Some(64));
        let c = P.creation();
        assert_eq!(c.get("topic"), Some(&Value::from("sums")));
        assert_eq!(c.get("credit_window"), Some(&Value::from(64)));
        assert!(!c.contains_key("is_x_pub"), "unset flags are not written");
        assert!(!c.contains_key("credit_stall_timeout_s"));
        assert_eq!(P.name(), "sums_out");
        let r: Requester<u8, u8> = Requester::new("adder").timeout_s(Some(0.5));
        assert_eq!(r.creation().get("timeout_s"), Some(&Value::from(0.5)));
        assert_eq!(Requester::<u8, u8>::new("x").creation().len(), 0);
    }
}
