//! The model-based test (to come).
