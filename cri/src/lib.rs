//! vmlet CRI services.
