"""Prompt templates per suite dataset, and the class names of its smaller datasets.

Facts, not code. ``TEMPLATES``: the CLIP paper's templates per dataset (OpenAI CLIP
``data/prompts.md``); for the VTAB tasks the paper has none for (CLEVR distance, DMLab, SVHN,
Retinopathy, sNORB, dSprites) CLIP_benchmark's English templates. ImageNet and its variants use
:data:`clip_jax.evaluate.templates.OPENAI_IMAGENET_TEMPLATES` (80; ``imagenet_simple``: the
7-template subset), CIFAR their 18. ``SMALL_CLASSNAMES``: as
:mod:`clip_jax.evaluate.classnames`, in the tfds label order (Pascal VOC 2007: tfds's
alphabetical order, the paper's list reordered; EuroSAT: tfds's ``AnnualCrop``, ``Forest``, ...
given the paper's names, as CLIP_benchmark does; CLEVR counts: labels are ``count - 3``, so
``3`` .. ``10``, where the paper's list is sorted as strings; KITTI: VTAB's closest-vehicle
distance bins < 8 m, 8-20 m, > 20 m, no vehicle; FER2013: the first of the paper's names per
class). Templates are ``str.format`` strings with one ``{}``.
"""

SMALL_CLASSNAMES = {
    "voc2007": (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
    ),
    "mnist": (
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    ),
    "stl10": (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
    ),
    "eurosat": (
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea",
    ),
    "pcam": (
    "lymph node", "lymph node containing metastatic tumor tissue",
    ),
    "kitti_distance": (
    "a photo i took of a car on my left or right side.", "a photo i took with a car nearby.",
    "a photo i took with a car in the distance.", "a photo i took with no car.",
    ),
    "clevr_count": (
    "3", "4", "5", "6", "7", "8", "9", "10",
    ),
    "clevr_distance": (
    "very nearby", "nearby", "near", "", "distant", "very distant",
    ),
    "dmlab": (
    "nearby apple/melon", "far apple/melon", "very far apple/melon", "nearby lemon", "far lemon",
    "very far lemon",
    ),
    "svhn": (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ),
    "retinopathy": (
    "no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
    "severe diabetic retinopathy", "proliferative diabetic retinopathy",
    ),
    "fer2013": (
    "angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral",
    ),
    "rendered_sst2": (
    "negative", "positive",
    ),
}

TEMPLATES = {
    "food101": (
    "a photo of {}, a type of food.",
    ),
    "sun397": (
    "a photo of a {}.", "a photo of the {}.",
    ),
    "cars": (
    "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
    "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
    "a photo of my old {}.",
    ),
    "voc2007": (
    "a photo of a {}.",
    ),
    "dtd": (
    "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
    "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
    "a photo of the {} thing.", "a photo of the {} object.",
    ),
    "pets": (
    "a photo of a {}, a type of pet.",
    ),
    "caltech101": (
    "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.",
    "a sketch of a {}.", "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.",
    "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
    "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
    "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
    "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
    "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
    "the plushie {}.", "the origami {}.", "art of the {}.", "graffiti of the {}.",
    "a drawing of the {}.", "a doodle of the {}.",
    ),
    "flowers": (
    "a photo of a {}, a type of flower.",
    ),
    "mnist": (
    "a photo of the number: \"{}\".",
    ),
    "stl10": (
    "a photo of a {}.", "a photo of the {}.",
    ),
    "eurosat": (
    "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
    ),
    "resisc45": (
    "satellite imagery of {}.", "aerial imagery of {}.", "satellite photo of {}.",
    "aerial photo of {}.", "satellite view of {}.", "aerial view of {}.",
    "satellite imagery of a {}.", "aerial imagery of a {}.", "satellite photo of a {}.",
    "aerial photo of a {}.", "satellite view of a {}.", "aerial view of a {}.",
    "satellite imagery of the {}.", "aerial imagery of the {}.", "satellite photo of the {}.",
    "aerial photo of the {}.", "satellite view of the {}.", "aerial view of the {}.",
    ),
    "pcam": (
    "this is a photo of {}",
    ),
    "kitti_distance": (
    "{}",
    ),
    "clevr_count": (
    "a photo of {} objects.",
    ),
    "fgvc_aircraft": (
    "a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft.",
    ),
    "gtsrb": (
    "a zoomed in photo of a \"{}\" traffic sign.", "a centered photo of a \"{}\" traffic sign.",
    "a close up photo of a \"{}\" traffic sign.",
    ),
    "country211": (
    "a photo i took in {}.", "a photo i took while visiting {}.",
    "a photo from my home country of {}.", "a photo from my visit to {}.",
    "a photo showing the country of {}.",
    ),
    "fer2013": (
    "a photo of a {} looking face.", "a photo of a face showing the emotion: {}.",
    "a photo of a face looking {}.", "a face that looks {}.", "they look {}.",
    "look at how {} they are.",
    ),
    "rendered_sst2": (
    "a {} review of a movie.",
    ),
    "clevr_distance": (
    "{} shapes.",
    ),
    "dmlab": (
    "{}",
    ),
    "svhn": (
    "a photo of the number {} written on a sign", "an outdoor house number {}",
    "the number {} in the center of the image", "an outdoor number {} writte on a sign",
    "an outdoor number {}", "a centered image of the number {}",
    ),
    "retinopathy": (
    "a retinal image with {}",
    ),
    "smallnorb": (
    "an object rotated at {}", "something rotated at {}", "{} rotation", "something at a {} angle",
    ),
    "dsprites_position": (
    "an object located at position {}% on the horizontal axis",
    ),
    "dsprites_orientation": (
    "an object rotated at {}", "something rotated at {}", "{} rotation", "something at a {} angle",
    ),
}
