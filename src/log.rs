//! rcr's log: messages go to stderr with -v, or to the file given with -o.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(0);
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// 0: errors only (printed by main), 1: info, 2: debug.
pub fn init(level: u8, file: Option<File>) {
    let level = if file.is_some() { level.max(2) } else { level };
    LEVEL.store(level, Ordering::Relaxed);
    *FILE.lock().unwrap() = file;
}

fn emit(level: u8, message: &str) {
    if LEVEL.load(Ordering::Relaxed) < level {
        return;
    }
    let mut file = FILE.lock().unwrap();
    match file.as_mut() {
        Some(file) => {
            let _ = writeln!(file, "{message}");
        }
        None => eprintln!("rcr: {message}"),
    }
}

/// Something the user must know although the command succeeds (lost state, say): always
/// shown, on stderr or in the -o file.
pub fn warn(message: &str) {
    emit(0, &format!("warning: {message}"));
}

pub fn info(message: &str) {
    emit(1, message);
}

pub fn debug(message: &str) {
    emit(2, message);
}

pub fn enabled(level: u8) -> bool {
    LEVEL.load(Ordering::Relaxed) >= level
}
