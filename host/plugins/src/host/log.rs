//! `deepwasm:plugin/log`.

use crate::bindings::log::{Host, Level};
use crate::host::HostState;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.output.log(level, message);
        Ok(())
    }
}
