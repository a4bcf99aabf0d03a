"""Images in: files, folders, class folders, ``.npz``, tensors, dataset adapters, patches.

Decoding (EXIF orientation, every Pillow mode → RGB), preprocessing described by the model's
own metadata (:class:`Preprocess`), grid/random patches (docs/method.md §7.3) and the real photos
that ship with installed packages.
"""

from __future__ import annotations

from face_concepts.data.bundled import BundledPhoto, bundled_photos
from face_concepts.data.datasets import (
    CELEBA_PAPER_ATTRIBUTES,
    FASHION_MNIST_CLASSES,
    celeba_attribute_classes,
    coco_category,
    fashion_mnist,
    imagenet_class_folder,
    load_coco_records,
    read_celeba_attributes,
    read_idx,
    resolve_imagenet_class_folder,
)
from face_concepts.data.decode import array_to_images, decode_image, to_rgb
from face_concepts.data.idx import fashion_mnist_images
from face_concepts.data.images import (
    IMAGE_EXTENSIONS,
    ImageSet,
    list_image_files,
    load_class_folders,
    load_images,
    preprocess_images,
)
from face_concepts.data.patches import (
    Patches,
    default_stride,
    extract_patches,
    grid_patches,
    random_patches,
    resize_patches,
)
from face_concepts.data.preprocess import Preprocess

__all__ = [
    "CELEBA_PAPER_ATTRIBUTES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "BundledPhoto",
    "ImageSet",
    "Patches",
    "Preprocess",
    "array_to_images",
    "bundled_photos",
    "celeba_attribute_classes",
    "coco_category",
    "decode_image",
    "default_stride",
    "extract_patches",
    "fashion_mnist",
    "fashion_mnist_images",
    "grid_patches",
    "imagenet_class_folder",
    "list_image_files",
    "load_class_folders",
    "load_coco_records",
    "load_images",
    "preprocess_images",
    "random_patches",
    "read_celeba_attributes",
    "read_idx",
    "resize_patches",
    "resolve_imagenet_class_folder",
    "to_rgb",
]
