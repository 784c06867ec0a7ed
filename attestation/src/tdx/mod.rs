//! Intel TDX: quote format, collateral, verification.

pub mod collateral;
pub mod quote;
pub mod verify;

pub use collateral::{TcbStatus, TdxCollateral};
pub use quote::{QeReport, Quote, QuoteHeader, TdReportBody};
pub use verify::{PckInfo, TdxVerified, verify_quote};
