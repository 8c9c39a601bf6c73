//! COM1 (16550A UART at 0x3f8, IRQ 4) on `vm-superio`, with a bounded output sink and
//! optional host-stdin input.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;

use super::IrqTrigger;
use crate::bus::{byte_register, BusDevice};
use crate::config::SerialOutput;
use crate::util::lock;

/// Base I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const COM1_PORTS: u64 = 8;

/// Where guest output bytes go, with a cap on the total written.
pub struct SerialSink {
    out: Option<Box<dyn Write + Send>>,
    remaining: u64,
    dropped: u64,
}

impl SerialSink {
    /// A sink writing at most `limit` bytes to `out` (`None` discards everything).
    pub fn new(out: Option<Box<dyn Write + Send>>, limit: u64) -> SerialSink {
        SerialSink {
            out,
            remaining: limit,
            dropped: 0,
        }
    }

    /// Bytes dropped because the limit was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(out) = self.out.as_mut() else {
            return Ok(buf.len());
        };
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n < buf.len() {
            if self.dropped == 0 {
                tracing::warn!("serial output limit reached; further guest output is dropped");
            }
            self.dropped += (buf.len() - n) as u64;
        }
        if n > 0 {
            // A broken output (closed pipe) must not stop the guest: count it as dropped.
            if out.write_all(&buf[..n]).is_err() {
                self.out = None;
                self.dropped += n as u64;
            }
            self.remaining -= n as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
        Ok(())
    }
}

/// The COM1 device as seen on the port I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, SerialSink>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: IrqTrigger, sink: SerialSink) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(irq, sink),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes pending output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    /// The output sink (for counters).
    pub fn sink(&self) -> &SerialSink {
        self.uart.writer()
    }

    /// The event fd that raises the UART interrupt.
    pub fn irq_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match byte_register(offset, data.len()) {
            Some(reg) => data[0] = self.uart.read(reg),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(reg), [value]) = (byte_register(offset, data.len()), data) {
            if let Err(e) = self.uart.write(reg, *value) {
                tracing::debug!("serial write failed: {e:?}");
            }
        }
    }
}

/// Opens the sink the configuration names.
pub fn open_sink(output: &SerialOutput, limit: u64) -> io::Result<SerialSink> {
    let out: Option<Box<dyn Write + Send>> = match output {
        SerialOutput::Stdout => Some(Box::new(io::stdout())),
        SerialOutput::File(path) => Some(Box::new(File::create(path)?)),
        SerialOutput::Null => None,
    };
    Ok(SerialSink::new(out, limit))
}

/// Event-loop subscriber that feeds host stdin into the guest's UART.
pub struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: io::Stdin,
}

impl StdinInput {
    /// Feeds stdin to `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> StdinInput {
        StdinInput {
            serial,
            stdin: io::stdin(),
        }
    }
}

impl MutEventSubscriber for StdinInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stdin, EventSet::IN)) {
            tracing::warn!("cannot watch stdin for the serial console: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = lock(&self.serial);
        // Read only what the FIFO can take, so no input byte is lost.
        let room = serial.input_capacity().min(64);
        if room == 0 && !events.event_set().contains(EventSet::HANG_UP) {
            return;
        }
        let mut buf = [0u8; 64];
        let n = match (&self.stdin).read(&mut buf[..room.max(1)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            // EOF or error: stop watching (otherwise epoll reports it forever).
            let _ = ops.remove(Events::new_raw(self.stdin.as_raw_fd(), EventSet::IN));
            return;
        }
        serial.enqueue_input(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device(limit: u64) -> (SerialDevice, Shared) {
        let out = Shared::default();
        let sink = SerialSink::new(Some(Box::new(out.clone())), limit);
        let irq = IrqTrigger(EventFd::new(EFD_NONBLOCK).unwrap());
        (SerialDevice::new(irq, sink), out)
    }

    #[test]
    fn guest_output_reaches_the_sink() {
        let (mut dev, out) = device(1024);
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn output_is_capped() {
        let (mut dev, out) = device(4);
        for b in b"0123456789" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"0123");
        assert_eq!(dev.sink().dropped(), 6);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (mut dev, out) = device(16);
        dev.write(0, &[1, 2]);
        let mut wide = [0u8; 2];
        dev.read(5, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_raises_the_interrupt_and_is_readable() {
        let (mut dev, _out) = device(16);
        dev.write(1, &[0x01]); // IER: received-data interrupt on
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(dev.irq_fd().read().unwrap() >= 1);
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte, [b'x']);
    }
}
