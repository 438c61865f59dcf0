//! Device metrics as one list per device: [`counters!`] declares the struct of `AtomicU64`
//! counters and its serialisation from the same field list, so a counter that is counted is
//! always reported (the metrics record is the struct's JSON), and a new counter needs one line.

/// Declares a counters struct (every field an `AtomicU64`, loaded with `Relaxed` when
/// serialised) and its `serde::Serialize` impl: `{"field": value, ...}` in declaration order.
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: ::std::sync::atomic::AtomicU64, )*
        }

        impl $name {
            /// The names of the counters, in the order they are reported.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                use ::serde::ser::SerializeStruct;
                let mut st = s.serialize_struct(stringify!($name), Self::FIELDS.len())?;
                $(
                    st.serialize_field(
                        stringify!($field),
                        &self.$field.load(::std::sync::atomic::Ordering::Relaxed),
                    )?;
                )*
                st.end()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    crate::counters! {
        /// Two counters.
        pub struct Two {
            /// The first.
            pub a,
            pub b,
        }
    }

    #[test]
    fn every_counter_is_serialised_in_order() {
        let t = Two::default();
        t.b.fetch_add(7, Ordering::Relaxed);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"a":0,"b":7}"#);
        assert_eq!(Two::FIELDS, ["a", "b"]);
    }
}
