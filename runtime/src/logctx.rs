//! The fields of the shim's log lines. containerd's shim logger writes a record's key-values
//! before its message (`time=… level=info pod="p" container="c" msg="…"`); every line the
//! shim logs through [`plog!`](crate::plog) names the pod its process serves (set once, when
//! containerd starts the task service), and a line about one container also names it.

use std::sync::OnceLock;

static POD: OnceLock<String> = OnceLock::new();

/// Records the pod this shim process serves (the first call wins).
pub fn set_pod(id: &str) {
    let _ = POD.set(id.to_string());
}

/// The pod this shim process serves (empty before [`set_pod`]).
pub fn pod() -> &'static str {
    POD.get().map_or("", String::as_str)
}

/// Logs at `log::Level::$level` with the `pod` field, and `container` when given:
/// `plog!(Info, "…")`, `plog!(Warn, container = id; "…")`.
#[macro_export]
macro_rules! plog {
    ($level:ident, container = $c:expr; $($arg:tt)+) => {
        ::log::log!(
            ::log::Level::$level,
            pod = $crate::logctx::pod(), container = $c;
            $($arg)+
        )
    };
    ($level:ident, $($arg:tt)+) => {
        ::log::log!(::log::Level::$level, pod = $crate::logctx::pod(); $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Keeps each record's key-values and message.
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            struct Kv(String);
            impl<'k> log::kv::VisitSource<'k> for Kv {
                fn visit_pair(
                    &mut self,
                    k: log::kv::Key<'k>,
                    v: log::kv::Value<'k>,
                ) -> Result<(), log::kv::Error> {
                    self.0 += &format!("{k}={v} ");
                    Ok(())
                }
            }
            let mut kv = Kv(String::new());
            let _ = r.key_values().visit(&mut kv);
            self.0.lock().unwrap().push(format!("{}{}", kv.0, r.args()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn lines_carry_the_pod_and_container() {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(capture).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        set_pod("pod1");
        set_pod("other");
        crate::plog!(Info, "booted in {} ms", 5);
        crate::plog!(Warn, container = "c1"; "exited");
        let lines = capture.0.lock().unwrap().clone();
        assert_eq!(
            lines,
            ["pod=pod1 booted in 5 ms", "pod=pod1 container=c1 exited"]
        );
    }
}
