from captioner.tokenizer import END_OF_TEXT, START_OF_TEXT, UNKNOWN, CaptionTokenizer


def test_ids_equal_openai_clip():
    tokenizer = CaptionTokenizer()
    assert tokenizer.clip_ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    # CLIP lower-cases and collapses whitespace before BPE.
    assert tokenizer.clip_ids("A  Photo of a CAT") == tokenizer.clip_ids("a photo of a cat")


def test_decode_gives_clean_text():
    tokenizer = CaptionTokenizer()
    ids = tokenizer.encode("A dog , running on the grass . It 's fun")
    assert tokenizer.decode(ids) == "a dog, running on the grass. it's fun"
    # Decoding stops at the first end token (which doubles as padding).
    assert tokenizer.decode([START_OF_TEXT, 320, 1929, END_OF_TEXT, 2368, 2368]) == "a dog"


def test_batch_pads_with_end_token_and_keeps_end_when_cut():
    tokenizer = CaptionTokenizer()
    batch = tokenizer.batch(["a cat", "a photo of a cat"], max_length=5)
    assert batch.tolist() == [
        [START_OF_TEXT, 320, 2368, END_OF_TEXT, END_OF_TEXT],
        [START_OF_TEXT, 320, 1125, 539, END_OF_TEXT],
    ]


def test_compact_vocabulary_round_trip_and_unknowns(tmp_path):
    compact = CaptionTokenizer.build_compact(["a dog runs", "a cat sleeps", "a dog sleeps"])
    assert compact.vocab[:3] == [END_OF_TEXT, START_OF_TEXT, UNKNOWN]
    assert compact.vocab_size == 3 + 5  # a, dog, runs, cat, sleeps
    ids = compact.encode("a dog sleeps")
    assert ids[0] == compact.start_id == 1 and ids[-1] == compact.end_id == 0
    assert max(ids) < compact.vocab_size
    assert compact.decode(ids) == "a dog sleeps"
    # A word never seen in training maps to the unknown id and is dropped on decoding.
    assert compact.encode("a zebra")[2] == compact.unknown_id
    assert compact.decode(compact.encode("a zebra runs")) == "a runs"
    compact.save(tmp_path / "tokenizer.json")
    again = CaptionTokenizer.load(tmp_path / "tokenizer.json")
    assert again.vocab == compact.vocab and again.encode("a cat") == compact.encode("a cat")


def test_min_count_prunes_rare_tokens():
    compact = CaptionTokenizer.build_compact(["a dog", "a dog", "a cat"], min_count=2)
    assert compact.decode(compact.encode("a cat")) == "a"


def test_token_strings_one_per_id():
    tokenizer = CaptionTokenizer()
    ids = tokenizer.encode("it's a dog")
    assert tokenizer.token_strings(ids) == ["", "it", "'s", "a", "dog", ""]
