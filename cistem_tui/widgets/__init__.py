"""Widgets of the TUI: pictures (:mod:`.picture`) and result plots (:mod:`.plots`)."""
