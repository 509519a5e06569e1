"""Default data configuration (``config.data`` of a training config)."""

import ml_collections

DATASET_NAMES = ("synth_vqa", "ivqa", "activitynet_qa", "msvd_qa", "msrvtt_qa", "tgif_frameqa")
TRAIN_TARGETS = ("most_frequent", "all")


def synth_config() -> ml_collections.ConfigDict:
  """Sizes and seed of the synth_vqa generator; the defaults are the demo dataset."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Everything generated (concepts, videos, questions, annotators) follows this seed.
  config.num_categories = 12  # Question categories ("What animal ...?"), one concept of each per scene at most.
  config.concepts_per_category = 10  # Concepts per category; each has 1-4 surface answers (synonyms).
  config.num_videos = 1200  # Videos; several questions share a video.
  config.train_questions = 2000  # Questions in train.csv.
  config.val_questions = 300  # Questions in val.csv.
  config.test_questions = 500  # Questions in test.csv.
  config.min_frames = 4  # Fewest frames of a video (below max_feats: padded with a mask).
  config.max_frames = 16  # Most frames of a video (above max_feats: evenly subsampled).
  config.noise = 0.5  # Std of per-frame Gaussian noise, relative to a unit-norm concept embedding.
  config.popularity_skew = 1.5  # Annotators pick the k-th synonym with probability proportional to k**-skew.
  return config


def default_config() -> ml_collections.ConfigDict:
  """Returns the data configuration with every field documented."""
  config = ml_collections.ConfigDict()
  config.name = "synth_vqa"  # One of DATASET_NAMES; any iVQA-layout directory works with 'ivqa'.
  config.manual_dir = ""  # Raw files in the FrozenBiLM layout; '' for synth_vqa = generate under data_dir.
  config.data_dir = ""  # Where TFDS writes array_record; the trainer uses <workdir>/data when empty.
  config.tokenizer_dir = ""  # Local Hugging Face tokenizer directory; '' for synth_vqa = the generated one.
  config.train_targets = "most_frequent"  # 'most_frequent' (one labeled answer) | 'all' (min(1, count/2)).
  config.max_feats = 10  # Frames per video: more are evenly subsampled, fewer zero-padded with a mask.
  config.features_dim = 768  # Dimension of a frame feature (CLIP ViT-L/14); other sizes are an error.
  config.max_tokens = 256  # Longest prompt in tokens; longer questions are cut, the [MASK] is kept.
  config.bucket_lengths = (16, 32, 64, 128, 256)  # Padded text lengths, so jit compiles a few shapes only.
  config.worker_count = 0  # Grain worker processes that assemble batches; 0 = in the main process.
  config.prefetch_buffer = 4  # Batches each grain worker prepares ahead of time.
  config.synth = synth_config()  # Generator sizes and seed, used when name == 'synth_vqa'.
  return config
