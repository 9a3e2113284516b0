"""Convert mmsegmentation sem_fpn checkpoints to fpn_seg model folders (the `fpn-seg-convert` console script).

    python conversion/convert_mmseg_checkpoint.py --model fpn_r50_512x1024_80k_cityscapes --output-dir out
    python conversion/convert_mmseg_checkpoint.py --help

All logic is in `fpn_seg.conversion`; this file only calls it.
"""

from fpn_seg.conversion import main

if __name__ == "__main__":
    raise SystemExit(main())
