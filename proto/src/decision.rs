//! The label-set diff and the fine-tune decision (DESIGN §4).
