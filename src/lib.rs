pub mod notification;
pub mod routing;
