"""The evaluation suite's datasets: one entry per dataset, data only (read by
:mod:`clip_jax.evaluate.suite`).

An :class:`Entry` pins what a score on the dataset means: the tfds builder and config, the split
evaluated (``test``) and the probe's ``train`` / ``val`` splits (``None``: carved from train),
the label (a feature key, or a derived label named in :data:`DERIVED_LABELS`, computed by
:mod:`clip_jax.evaluate.suite`), the class names in the dataset's own label order (a key of
:data:`clip_jax.evaluate.classnames.CLASSNAMES`, :data:`clip_jax.evaluate.prompts.SMALL_CLASSNAMES`,
``imagenet`` / ``cifar10`` / ``cifar100`` of :mod:`clip_jax.evaluate.templates`, or ``""`` for
the builder's own ``ClassLabel`` names), the templates, and the headline metric.

Splits are tfds split expressions. Where tfds has no test split they are VTAB's
(``task_adaptation/data/*.py``): a percentage bound ``p%`` of a split of n examples is example
``n * p // 100``, VTAB's counts (EuroSAT, RESISC45: train 60%, val 20%, test the last 20% of
train; Food-101: test = validation; CLEVR: test = validation, label = number of objects - 3;
KITTI: label = closest vehicle's distance bin, from ``objects``). Every dataset may also come as
a folder ``DIR/<name>/{train,val,test}/<class>/*``; FGVC Aircraft, GTSRB, Country211, FER2013
and Rendered SST2 only come so (tfds does not build them).

Multilingual retrieval: ``xm3600_<lang>`` (suite ``xm3600``), Crossmodal-3600's captions in
each of its 36 languages, from one folder.

Semantic segmentation (suite ``segmentation``): a linear probe on a ViT's patch tokens
(:mod:`clip_jax.evaluate.segmentation`), fitted on ``train`` and scored on ``test``, headline
``miou``; Pascal VOC 2012 comes as its devkit folder ``DIR/voc2012_seg`` (tfds has no VOC masks).

Headline metric: ``mean_per_class_recall`` where the CLIP paper and DataComp report it (FGVC
Aircraft, Oxford Pets, Caltech-101, Flowers-102; VOC 2007 as CLIP_benchmark's cropped-object
classification), else ``acc1``; retrieval: ``mean_recall`` (R@1/5/10 both ways, averaged).
"""

from __future__ import annotations

import dataclasses

DERIVED_LABELS = ("clevr_count", "clevr_distance", "kitti_distance", "voc_objects",
                  "imagenet_a", "imagenet_r")
METRICS = ("acc1", "mean_per_class_recall", "mean_recall", "miou")
TFDS_BUILD = "tfds build {builder} --data_dir DIR --file_format array_record"


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    tfds: str | None  # builder[/config]; None: folder only
    test: str = "test"
    train: str | None = "train"
    val: str | None = None  # None: carved from train
    label: str = "label"  # a feature key or one of DERIVED_LABELS
    classes: str = ""  # key of the class-name tables; "" = the builder's ClassLabel names
    templates: str = ""  # key of prompts.TEMPLATES, or imagenet / imagenet_simple / cifar10
    metric: str = "acc1"
    task: str = "classification"  # or "retrieval", "segmentation"
    prepare: str = ""  # how to prepare it where there is internet ("" = TFDS_BUILD)
    source: str = ""  # where it comes from, for the README table
    folder: str = ""  # its folder under the data dir ("" = its name; several may share one)


_MPCR = "mean_per_class_recall"
_IMNET = dict(classes="imagenet", templates="imagenet", train=None)


def _folder(name: str, how: str, **kw) -> Entry:
    return Entry(name, None, source="folder", prepare=f"download {how}; then lay it out as "
                 f"DIR/{name}/{{train,test}}/<class name or index>/*.jpg", **kw)


ENTRIES = {e.name: e for e in (
    # The CLIP paper's datasets that tfds builds (Table 9 / Fig. 6), with VTAB's splits where
    # VTAB has the dataset.
    Entry("food101", "food101", test="validation", train="train[:90%]", val="train[90%:]",
          classes="food101", templates="food101"),
    Entry("cifar10", "cifar10", train="train[:90%]", val="train[90%:]", classes="cifar10",
          templates="cifar10"),
    Entry("cifar100", "cifar100", train="train[:90%]", val="train[90%:]", classes="cifar100",
          templates="cifar100"),
    Entry("sun397", "sun397/tfds", val="validation", classes="sun397", templates="sun397",
          prepare="tfds build sun397/tfds --data_dir DIR --file_format array_record (one image "
          "of the archive does not decode: a known tfds issue)"),
    Entry("cars", "cars196", classes="cars", templates="cars",
          prepare="tfds build cars196 --data_dir DIR --file_format array_record (the Stanford "
          "URLs are gone: put car_ims.tgz, cars_annos.mat into DIR/downloads/manual)"),
    Entry("voc2007", "voc/2007", val="validation", label="voc_objects", classes="voc2007",
          templates="voc2007", metric=_MPCR),
    Entry("dtd", "dtd", val="validation", classes="dtd", templates="dtd"),
    Entry("pets", "oxford_iiit_pet", train="train[:80%]", val="train[80%:]", classes="pets",
          templates="pets", metric=_MPCR),
    Entry("caltech101", "caltech101", train="train[:90%]", val="train[90%:]",
          classes="caltech101", templates="caltech101", metric=_MPCR),
    Entry("flowers", "oxford_flowers102", val="validation", classes="flowers",
          templates="flowers", metric=_MPCR),
    Entry("mnist", "mnist", classes="mnist", templates="mnist"),
    Entry("stl10", "stl10", classes="stl10", templates="stl10"),
    Entry("eurosat", "eurosat/rgb", test="train[80%:]", train="train[:60%]",
          val="train[60%:80%]", classes="eurosat", templates="eurosat"),
    Entry("resisc45", "resisc45", test="train[80%:]", train="train[:60%]",
          val="train[60%:80%]", classes="resisc45", templates="resisc45",
          prepare="put NWPU-RESISC45.rar, extracted, into DIR/downloads/manual, then "
          "tfds build resisc45 --data_dir DIR --file_format array_record"),
    Entry("kitti", "kitti", val="validation", label="kitti_distance", classes="kitti_distance",
          templates="kitti_distance"),
    Entry("pcam", "patch_camelyon", val="validation", classes="pcam", templates="pcam"),
    Entry("clevr_count", "clevr", test="validation", train="train[:90%]", val="train[90%:]",
          label="clevr_count", classes="clevr_count", templates="clevr_count"),
    Entry("imagenet", "imagenet2012", test="validation", **dict(_IMNET, train="train"),
          prepare="put ILSVRC2012_img_{train,val}.tar into DIR/downloads/manual (by hand: "
          "image-net.org), then tfds build imagenet2012 --data_dir DIR --file_format "
          "array_record"),
    # The paper's datasets tfds does not build: image folders.
    _folder("fgvc_aircraft", "fgvc-aircraft-2013b.tar.gz (variants; the trainval/test lists)",
            classes="fgvc_aircraft", templates="fgvc_aircraft", metric=_MPCR),
    _folder("gtsrb", "GTSRB Final_Training / Final_Test (class folders 00000..00042)",
            classes="gtsrb", templates="gtsrb"),
    _folder("country211", "OpenAI's country211.tgz (train/valid/test, ISO-code folders)",
            classes="country211", templates="country211"),
    _folder("fer2013", "kaggle datasets download -d msambare/fer2013 (train/test folders)",
            classes="fer2013", templates="fer2013"),
    _folder("rendered_sst2", "OpenAI's rendered-sst2.tgz (train/valid/test)",
            classes="rendered_sst2", templates="rendered_sst2"),
    # Robustness (ImageNet's 1000 classes; A and R: their 200-class subsets).
    Entry("imagenetv2", "imagenet_v2/matched-frequency", **_IMNET),
    Entry("imagenet_sketch", "imagenet_sketch", **_IMNET),
    Entry("imagenet_a", "imagenet_a", label="imagenet_a", **_IMNET),
    Entry("imagenet_r", "imagenet_r", label="imagenet_r", **_IMNET),
    # The rest of VTAB-1k.
    Entry("svhn", "svhn_cropped", train="train[:90%]", val="train[90%:]", classes="svhn",
          templates="svhn"),
    Entry("retinopathy", "diabetic_retinopathy_detection/btgraham-300", val="validation",
          classes="retinopathy", templates="retinopathy",
          prepare="kaggle competitions download -c diabetic-retinopathy-detection into "
          "DIR/downloads/manual, extracted, then tfds build "
          "diabetic_retinopathy_detection/btgraham-300 --data_dir DIR --file_format "
          "array_record"),
    Entry("clevr_distance", "clevr", test="validation", train="train[:90%]",
          val="train[90%:]", label="clevr_distance", classes="clevr_distance",
          templates="clevr_distance"),
    Entry("dmlab", "dmlab", val="validation", classes="dmlab", templates="dmlab"),
    Entry("dsprites_position", "dsprites", test="train[90%:]", train="train[:80%]",
          val="train[80%:90%]", label="label_x_position", templates="dsprites_position"),
    Entry("dsprites_orientation", "dsprites", test="train[90%:]", train="train[:80%]",
          val="train[80%:90%]", label="label_orientation", templates="dsprites_orientation"),
    Entry("smallnorb_azimuth", "smallnorb", test="test[50%:]", val="test[:50%]",
          label="label_azimuth", templates="smallnorb"),
    Entry("smallnorb_elevation", "smallnorb", test="test[50%:]", val="test[:50%]",
          label="label_elevation", templates="smallnorb"),
    # The demo corpus's held-out card (clip_jax.data.demo), written as a folder by
    # clip_jax.evaluate.suite_data.card_to_folder (class names and templates in the folder).
    Entry("demo", None, source="folder", prepare="python -c \"from clip_jax.evaluate import "
          "suite_data; suite_data.card_to_folder('data/demo/zeroshot.json', 'DIR/demo')\""),
    # Semantic segmentation: 21 classes (background + VOC's 20), boundaries (255) ignored;
    # the probe fits on the 1,464 train images and is scored on the 1,449 val images.
    Entry("voc2012_seg", None, test="val", train="train", task="segmentation", metric="miou",
          source="folder (Pascal VOC 2012 devkit: JPEGImages, SegmentationClass)",
          prepare="download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
          "VOCtrainval_11-May-2012.tar and extract its VOCdevkit/VOC2012 as DIR/voc2012_seg "
          "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt)"),
    # Retrieval (Karpathy test splits): R@1/5/10 both ways.
    Entry("mscoco", "coco_captions", train=None, label="captions", task="retrieval",
          metric="mean_recall", source="tfds coco_captions (Karpathy test: 5000 images)"),
    Entry("mscoco_1k", "coco_captions", test="test[:1000]", train=None, label="captions",
          task="retrieval", metric="mean_recall",
          source="tfds coco_captions (the first 1000 of the Karpathy test images: its first "
          "1k fold)"),
    Entry("flickr30k", None, train=None, label="captions", task="retrieval",
          metric="mean_recall", source="folder + captions file",
          prepare="the Flickr30k images into DIR/flickr30k/images/ and the Karpathy test "
          "captions as DIR/flickr30k/captions.txt (lines 'FILE.jpg<TAB>caption', or "
          "CLIP_benchmark's flickr30k_test_karpathy.txt)"),
)}

# Crossmodal-3600 (Thapliyal et al. 2022): 3600 Open Images photos, captions in 36 languages.
# One retrieval entry per language, all read from one folder DIR/xm3600 (captions.jsonl:
# {"image/key": KEY, "<lang>": {"caption": [...]}, ...} per line; images/KEY.jpg), every
# caption of the language used (CLIP_benchmark's crossmodal3600 keeps the first per image).
XM3600_LANGUAGES = ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr",
                    "he", "hi", "hr", "hu", "id", "it", "ja", "ko", "mi", "nl", "no", "pl",
                    "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh")
ENTRIES.update({f"xm3600_{lang}": Entry(
    f"xm3600_{lang}", None, train=None, label=f"xm3600:{lang}", task="retrieval",
    metric="mean_recall", folder="xm3600", source=f"folder (Crossmodal-3600, {lang} captions)",
    prepare="download https://google.github.io/crossmodal-3600/web-data/captions.zip (its "
    "captions.jsonl) and https://open-images-dataset.s3.amazonaws.com/crossmodal-3600/"
    "images.tgz; then lay them out as DIR/xm3600/captions.jsonl and DIR/xm3600/images/KEY.jpg")
    for lang in XM3600_LANGUAGES})

SUITES = {
    "clip_paper": ("food101", "cifar10", "cifar100", "sun397", "cars", "fgvc_aircraft",
                   "voc2007", "dtd", "pets", "caltech101", "flowers", "mnist", "fer2013",
                   "stl10", "eurosat", "resisc45", "gtsrb", "kitti", "country211", "pcam",
                   "rendered_sst2", "clevr_count", "imagenet"),
    "robustness": ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"),
    "vtab": ("caltech101", "cifar100", "dtd", "flowers", "pets", "sun397", "svhn", "pcam",
             "eurosat", "resisc45", "retinopathy", "clevr_count", "clevr_distance", "dmlab",
             "kitti", "dsprites_position", "dsprites_orientation", "smallnorb_azimuth",
             "smallnorb_elevation"),
    "retrieval": ("flickr30k", "mscoco", "mscoco_1k"),
    "demo": ("demo",),
    "segmentation": ("voc2012_seg",),
    "xm3600": tuple(f"xm3600_{lang}" for lang in XM3600_LANGUAGES),
}
# VTAB-1k trains its probes on 800 examples and validates on 200.
SUITE_PROBE_SIZES = {"vtab": (800, 200)}
