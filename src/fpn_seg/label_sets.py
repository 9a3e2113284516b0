"""Class names and palettes of the datasets the seed models were trained on.

Read by the presets and the colour palettes (not hub code: a saved model carries its class names in `id2label`). The
ADE20K names are mmsegmentation's (`ADE20KDataset.METAINFO`, 150 classes, annotation value `v` is class `v - 1` after
`reduce_zero_label`), with the trailing space of mmseg's `"bed "` stripped.
"""

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

DATASET_CLASSES = {"cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES}


def label_palette(num_labels: int, dataset: str | None = None) -> list[tuple[int, int, int]]:
    """One RGB colour per class: the Cityscapes palette for Cityscapes, else a fixed, well-spread generated one."""
    if dataset == "cityscapes" and num_labels <= len(CITYSCAPES_PALETTE):
        return [tuple(c) for c in CITYSCAPES_PALETTE[:num_labels]]
    colours = []
    for index in range(num_labels):
        # Bit-reversal palette (as PASCAL VOC's): neighbouring ids get distant colours.
        r = g = b = 0
        value = index + 1
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


__all__ = ["ADE20K_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "DATASET_CLASSES", "label_palette"]
