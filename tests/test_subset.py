"""inception.data.subset: the class subsets and few-image subsets of notebook 07's experiment."""

import pytest
import torch

from inception.data import ConfigError, ImageData, channel_stats, few_per_class, select_classes


def _data(per_class=(6, 4, 5), seed=0) -> ImageData:
    """Three classes of tiny images whose pixel values encode (class, index) for checking."""
    generator = torch.Generator().manual_seed(seed)

    def split(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        labels = labels[torch.randperm(len(labels), generator=generator)]
        images = torch.randint(0, 256, (len(labels), 3, 4, 4), dtype=torch.uint8,
                               generator=generator)
        images[:, 0, 0, 0] = labels.to(torch.uint8)  # the class, readable from the image
        return images, labels

    (tx, ty), (vx, vy), (sx, sy) = split(per_class), split((2, 2, 2)), split((3, 3, 3))
    return ImageData("toy", "image folder", ["ant", "bee", "cat"], tx, ty, vx, vy, sx, sy,
                     mean=(0.5,) * 3, std=(0.25,) * 3)


def test_select_classes_keeps_their_images_in_every_split_and_renumbers_them_in_order():
    data = _data()
    task = select_classes(data, ["cat", "ant"], name="toy B")
    assert task.classes == ["cat", "ant"] and task.title == "toy B (image folder, 4x4)"
    for split, before in (("train", (6, 4, 5)), ("val", (2, 2, 2)), ("test", (3, 3, 3))):
        images, labels = task.split(split)
        assert torch.bincount(labels).tolist() == [before[2], before[0]]
        # every image came along with its own label: "cat" (old 2) is now 0, "ant" (old 0) is 1
        assert (images[:, 0, 0, 0] == torch.tensor([2, 0])[labels]).all()
    assert (task.mean, task.std) == channel_stats(task.train_images)


def test_few_per_class_is_balanced_seeded_and_nested():
    data = _data(per_class=(10, 8, 9))
    two, four = few_per_class(data, 2, seed=3), few_per_class(data, 4, seed=3)
    assert torch.bincount(two.train_labels).tolist() == [2, 2, 2]
    assert torch.bincount(four.train_labels).tolist() == [4, 4, 4]
    rows = {tuple(x.flatten().tolist()) for x in four.train_images}
    assert all(tuple(x.flatten().tolist()) in rows for x in two.train_images)  # nested
    assert torch.equal(few_per_class(data, 2, seed=3).train_images, two.train_images)
    assert not torch.equal(few_per_class(data, 2, seed=4).train_images, two.train_images)
    assert (two.train_images[:, 0, 0, 0] == two.train_labels.to(torch.uint8)).all()
    assert torch.equal(two.test_images, data.test_images) and two.val_labels.equal(data.val_labels)
    assert (two.mean, two.std) == channel_stats(two.train_images)


@pytest.mark.parametrize("classes, problem", [(["ant", "dog"], "'dog' not among them"),
                                              ([], "empty"), (["ant", "ant"], "twice")])
def test_select_classes_refuses_what_the_data_lacks(classes, problem):
    with pytest.raises(ConfigError, match=problem):
        select_classes(_data(), classes, name="x")


def test_few_per_class_refuses_more_than_a_class_has_and_says_the_most_it_can():
    with pytest.raises(ConfigError, match=r"fewer than 5 .* bee \(4\).*at most 4"):
        few_per_class(_data(per_class=(6, 4, 5)), 5)
    with pytest.raises(ConfigError, match="whole number"):
        few_per_class(_data(), 0)
