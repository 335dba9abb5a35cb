//! Page data files: raw, page-aligned contents described by pagemap-PID.img.
