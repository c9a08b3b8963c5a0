"""Record and image-folder sources: round trips, TF interop, grain protocol, one-line errors, lazy indexing."""

import os
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from archlab.train.data import DataError
from archlab.train.data.image_folder import ImageFolderSource, decode_image, image_folder_splits, resize_image
from archlab.train.data.example_format import encode_example, parse_example
from archlab.train.data.records import (ArrayRecordSource, TFRecordSource, crc32c, image_example, record_split_files,
                                        write_array_record, write_tfrecord)


def _images(n: int, channels: int = 3, size: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(channels)
    return [rng.integers(0, 256, (size, size + 1, channels), dtype=np.uint8) for _ in range(n)]


def _raises_naming(what: str, call, *args):
    """Runs ``call``; it must raise a one-line DataError whose message names ``what``."""
    with pytest.raises(DataError) as info:
        call(*args)
    message = str(info.value)
    assert what in message and "\n" not in message, message
    return message


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format=fmt)
    return buffer.getvalue()


def test_tfrecord_round_trip_encoded_and_raw_images(tmp_path):
    rgb, gray = _images(3), _images(3, channels=1)
    examples = ([image_example(x, i) for i, x in enumerate(rgb)]
                + [image_example(x, 10 + i, encoding="raw") for i, x in enumerate(gray)]
                + [image_example(rgb[0], 20, encoding="raw")])
    path = str(tmp_path / "mixed.tfrecord")
    assert write_tfrecord(path, examples) == 7
    source = TFRecordSource([path], verify_data_crc=True)
    assert len(source) == 7
    for i, expected in enumerate(rgb + gray + [rgb[0]]):
        record = source[i]
        np.testing.assert_array_equal(record["image"], expected)
        assert record["image"].dtype == np.uint8 and record["label"].dtype == np.int32
    assert [int(source[i]["label"]) for i in range(7)] == [0, 1, 2, 10, 11, 12, 20]
    np.testing.assert_array_equal(source.labels(), [0, 1, 2, 10, 11, 12, 20])
    assert source[-1]["label"] == 20
    with pytest.raises(IndexError):
        source[7]
    assert repr(source) == repr(TFRecordSource([path])) and "0x" not in repr(source) and "7 records" in repr(source)
    # Two files form one source, in order; the TFDS key names work through the key arguments.
    other = str(tmp_path / "tfds.tfrecord")
    write_tfrecord(other, [image_example(rgb[1], 5, image_key="image/encoded", label_key="image/class/label")])
    both = TFRecordSource([other, other], image_key="image/encoded", label_key="image/class/label")
    assert len(both) == 2 and both[1]["label"] == 5
    np.testing.assert_array_equal(both[1]["image"], rgb[1])


def test_example_codec_values_and_unpacked_lists():
    features = {"b": [b"x", b""], "s": "héllo", "i": [0, -1, 2**62, -(2**63)], "f": [1.5, -2.0], "one": 7,
                "empty": [], "arr": np.arange(3, dtype=np.int64)}
    decoded = parse_example(encode_example(features))
    assert decoded == {"b": [b"x", b""], "s": ["héllo".encode()], "i": [0, -1, 2**62, -(2**63)], "f": [1.5, -2.0],
                       "one": [7], "empty": [], "arr": [0, 1, 2]}
    assert parse_example(encode_example(features), keys=["one"]) == {"one": [7]}
    # Unpacked repeated values (valid protobuf that some writers emit): Feature{int64_list{1, 2}}, Feature{float_list{0.5}}.
    unpacked_int = b"\x1a\x04\x08\x01\x08\x02"
    unpacked_float = b"\x12\x05\x0d" + struct.pack("<f", 0.5)

    def entry(name: bytes, feature: bytes) -> bytes:  # Features.feature map entry {1: name, 2: feature}
        body = b"\x0a" + bytes([len(name)]) + name + b"\x12" + bytes([len(feature)]) + feature
        return b"\x0a" + bytes([len(body)]) + body

    body = entry(b"a", unpacked_int) + entry(b"b", unpacked_float)
    assert parse_example(b"\x0a" + bytes([len(body)]) + body) == {"a": [1, 2], "b": [0.5]}
    assert crc32c(b"123456789") == 0xE3069283  # the CRC32C check value


def test_tensorflow_reads_ours_and_we_read_tensorflows(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rgb, gray = _images(2), _images(2, channels=1)
    theirs = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(theirs) as writer:
        for i, image in enumerate(rgb + gray):
            feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_encoded(image, "PNG")])),
                       "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                       "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"f%d.png" % i]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    source = TFRecordSource([theirs], image_key="image/encoded", label_key="image/class/label", verify_data_crc=True)
    for i, expected in enumerate(rgb + gray):
        np.testing.assert_array_equal(source[i]["image"], expected)
        assert source[i]["label"] == i

    ours = str(tmp_path / "ours.tfrecord")
    write_tfrecord(ours, [{**image_example(rgb[0], 3, encoding="raw"), "score": [0.25, -1.0], "name": "a"},
                          {**image_example(rgb[1], -4, encoding="raw"), "score": [2.0, 3.5], "name": "b"}])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "height": tf.io.FixedLenFeature([], tf.int64), "score": tf.io.FixedLenFeature([2], tf.float32),
            "name": tf.io.FixedLenFeature([], tf.string)}
    parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(ours)]  # checks both CRCs
    assert [int(p["label"]) for p in parsed] == [3, -4] and [p["name"].numpy() for p in parsed] == [b"a", b"b"]
    np.testing.assert_array_equal(np.frombuffer(parsed[1]["image"].numpy(), np.uint8).reshape(rgb[1].shape), rgb[1])
    np.testing.assert_allclose(parsed[0]["score"].numpy(), [0.25, -1.0])
    assert int(parsed[0]["height"]) == rgb[0].shape[0]


def test_array_record_round_trip_grain_batches_and_pickle(tmp_path):
    import grain

    images = _images(10)
    path = str(tmp_path / "digits-train.array_record-00000-of-00001")
    assert write_array_record(path, [image_example(x, i % 3) for i, x in enumerate(images)]) == 10
    source = ArrayRecordSource([path], num_classes=3)
    assert len(source) == 10 and source.num_classes == 3 and "10 records" in repr(source)
    np.testing.assert_array_equal(source[4]["image"], images[4])
    np.testing.assert_array_equal(source.labels(), np.arange(10) % 3)
    batches = list(grain.MapDataset.source(source).shuffle(seed=0).batch(4))
    assert [b["image"].shape for b in batches] == [(4, 6, 7, 3), (4, 6, 7, 3), (2, 6, 7, 3)]
    assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == sorted(np.arange(10) % 3)

    tfrecord = str(tmp_path / "same.tfrecord")
    write_tfrecord(tfrecord, [image_example(x, i) for i, x in enumerate(images)])
    tf_source = TFRecordSource([tfrecord])
    tf_source[0]  # opens a handle, which must not travel with the pickle
    for original in (source, tf_source):
        copy = pickle.loads(pickle.dumps(original))
        assert repr(copy) == repr(original)
        np.testing.assert_array_equal(copy[7]["image"], images[7])
    assert len(list(grain.MapDataset.source(tf_source).shuffle(seed=0).batch(5))) == 2


def test_image_folders_flat_and_split_with_jpeg_and_png(tmp_path):
    images = _images(4, size=8)

    def save(directory, name, image, fmt):
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(image).save(os.path.join(directory, name), format=fmt)

    flat = tmp_path / "flat"
    save(flat / "zebra", "a.png", images[0], "PNG")
    smooth = np.stack([*np.meshgrid(np.arange(7) * 30, np.arange(8) * 25), np.full((8, 7), 90)], -1).astype(np.uint8)
    save(flat / "ant", "b.jpg", smooth, "JPEG")
    save(flat / "ant", "a.PNG", images[2], "PNG")
    (flat / "ant" / "notes.txt").write_text("not an image")
    source = image_folder_splits(str(flat))["train"]
    assert source.class_names == ("ant", "zebra") and source.num_classes == 2 and len(source) == 3
    assert [int(source[i]["label"]) for i in range(3)] == [0, 0, 1]
    np.testing.assert_array_equal(source[0]["image"], images[2])  # ant/a.PNG sorts before ant/b.jpg
    assert source[1]["image"].shape == (8, 7, 3) and np.abs(source[1]["image"].astype(int) - smooth).mean() < 8  # lossy
    np.testing.assert_array_equal(source.labels(), [0, 0, 1])
    assert repr(pickle.loads(pickle.dumps(source))) == repr(source) and "3 images" in repr(source)

    split = tmp_path / "split"
    for part in ("train", "test", "val"):
        for c, name in enumerate(("cat", "dog")):
            save(split / part / name, f"{part}.png", images[c], "PNG")
    splits = image_folder_splits(str(split))
    assert set(splits) == {"train", "test", "validation"}
    assert splits["test"].split_dir == "test" and [int(splits["test"][i]["label"]) for i in range(2)] == [0, 1]
    np.testing.assert_array_equal(splits["validation"][1]["image"], images[1])
    save(split / "test" / "eel", "x.png", images[0], "PNG")
    _raises_naming("eel", image_folder_splits, str(split))


def test_decode_and_resize_helpers():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    assert decode_image(_encoded(rgba, "PNG"), "x").shape == (4, 5, 3)
    gray = decode_image(_encoded(np.full((4, 5, 1), 9, np.uint8), "PNG"), "x")
    assert gray.shape == (4, 5, 1) and gray.flags.writeable and (gray == 9).all()
    image = _images(1, size=8)[0]
    assert resize_image(image, 0) is image
    resized = resize_image(image, 4)
    assert resized.shape == (4, 4, 3) and resized.dtype == np.uint8
    assert resize_image(gray, 16).shape == (16, 16, 1)


def test_record_split_files(tmp_path):
    tfds = tmp_path / "tfds"
    tfds.mkdir()
    for name in ("mnist-train.tfrecord-00001-of-00002", "mnist-train.tfrecord-00000-of-00002",
                 "mnist-test.tfrecord-00000-of-00001", "mnist-validation.tfrecord-00000-of-00001",
                 "dataset_info.json", "cifar10-test.array_record-00000-of-00001"):
        (tfds / name).write_bytes(b"")
    splits = record_split_files(str(tfds), [".tfrecord"])
    assert {k: [os.path.basename(p) for p in v] for k, v in splits.items()} == {
        "train": ["mnist-train.tfrecord-00000-of-00002", "mnist-train.tfrecord-00001-of-00002"],
        "test": ["mnist-test.tfrecord-00000-of-00001"], "validation": ["mnist-validation.tfrecord-00000-of-00001"]}
    assert list(record_split_files(str(tfds), ["array_record"])) == ["test"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "latest.tfrecord").write_bytes(b"")  # "latest" is not the word "test"
    (plain / "b.tfrecord").write_bytes(b"")
    assert record_split_files(str(plain), [".tfrecord"]) == {"train": [str(plain / "b.tfrecord"), str(plain / "latest.tfrecord")]}
    assert record_split_files(str(plain / "b.tfrecord"), [".tfrecord"]) == {"train": [str(plain / "b.tfrecord")]}
    message = _raises_naming(str(plain), record_split_files, str(plain), [".array_record"])
    assert ".array_record" in message


def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path):
    good = str(tmp_path / "good.tfrecord")
    write_tfrecord(good, [image_example(x, 1) for x in _images(3)])
    data = open(good, "rb").read()

    truncated = str(tmp_path / "truncated.tfrecord")
    open(truncated, "wb").write(data[:-7])
    assert "record 2" in _raises_naming(truncated, TFRecordSource, [truncated])
    flipped = str(tmp_path / "flipped.tfrecord")
    first_length = struct.unpack("<Q", data[:8])[0]
    second = 16 + first_length  # the second record's header
    open(flipped, "wb").write(data[:second + 1] + bytes([data[second + 1] ^ 0x01]) + data[second + 2:])
    assert "record 1" in _raises_naming(flipped, TFRecordSource, [flipped])
    garbage = str(tmp_path / "garbage.tfrecord")
    open(garbage, "wb").write(b"this is plain text, not a TFRecord file at all\n" * 3)
    _raises_naming(garbage, TFRecordSource, [garbage])

    payload = str(tmp_path / "payload.tfrecord")
    write_tfrecord(payload, [image_example(_images(1)[0], 0), b"this is not a tf.train.Example"])
    source = TFRecordSource([payload])
    source[0]
    assert "record 1" in _raises_naming(payload, source.__getitem__, 1)
    assert "record 1" in _raises_naming(payload, source.labels)
    bad_image = str(tmp_path / "bad_image.tfrecord")
    write_tfrecord(bad_image, [{"image": b"\x89PNG not really", "label": 0}])
    _raises_naming(bad_image, TFRecordSource([bad_image]).__getitem__, 0)
    corrupt = str(tmp_path / "corrupt_payload.tfrecord")
    open(corrupt, "wb").write(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    _raises_naming(corrupt, TFRecordSource([corrupt], verify_data_crc=True).__getitem__, 0)

    _raises_naming(good, ArrayRecordSource, [good])
    text = tmp_path / "notes.array_record"
    text.write_text("hello")
    _raises_naming(str(text), ArrayRecordSource, [str(text)])
    _raises_naming("missing.tfrecord", TFRecordSource, [str(tmp_path / "missing.tfrecord")])

    empty = tmp_path / "empty"
    empty.mkdir()
    _raises_naming(str(empty), record_split_files, str(empty), [".tfrecord"])
    _raises_naming(str(empty), image_folder_splits, str(empty))
    _raises_naming("nowhere", image_folder_splits, str(tmp_path / "nowhere"))
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    (folder / "dog").mkdir()
    Image.fromarray(_images(1)[0]).save(folder / "cat" / "ok.png")
    _raises_naming(str(folder / "dog"), ImageFolderSource, str(folder))
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    source = ImageFolderSource(str(folder))
    _raises_naming(os.path.join("dog", "broken.jpg"), source.__getitem__, 1)


def test_construction_indexes_offsets_without_reading_payloads(tmp_path):
    count, shape = 2000, (32, 32, 3)  # 3 KB raw images
    path = str(tmp_path / "many.tfrecord")
    pixels = lambda i: np.full(shape, i % 251, np.uint8)
    write_tfrecord(path, ({"image": pixels(i).tobytes(), "height": 32, "width": 32, "channels": 3, "label": i}
                          for i in range(count)))
    assert os.path.getsize(path) > count * 3072
    tracemalloc.start()
    start = time.perf_counter()
    source = TFRecordSource([path])
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(source) == count
    assert peak < 1_000_000, f"indexing {count} records peaked at {peak} bytes: payloads were read"
    assert seconds < 5, f"indexing {count} records took {seconds:.1f} s"
    for i in np.random.default_rng(0).integers(0, count, 25):
        record = source[int(i)]
        assert record["label"] == i
        np.testing.assert_array_equal(record["image"], pixels(int(i)))
