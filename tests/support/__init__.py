"""Helpers that tests of several packages share: tiny models (`models`) and training runs (`training`)."""
