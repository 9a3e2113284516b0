"""Conversion scripts; the logic lives in `fpn_seg.conversion`."""
