"""Datasets for Semantic FPN: Cityscapes, ADE20K and generic image/label datasets as `datasets.DatasetDict`s."""
