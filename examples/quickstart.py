"""Quickstart: train a tiny memory model (Masked Mixer by default) from scratch on CPU, save, reload, generate.

What it shows, end to end and fully offline (nothing is downloaded):

1. a byte-level BPE tokenizer trained with `tokenizers` and wrapped as a `transformers.PreTrainedTokenizerFast`;
2. a tiny `MaskedMixerConfig` / `MaskedMixerForCausalLM` (or, with `--architecture memory-mosaics`, a
   `MemoryMosaicsConfig` / `MemoryMosaicsForCausalLM`; with `--architecture memory-layers`, a
   `MemoryLayersConfig` / `MemoryLayersForCausalLM` with two product-key memory layers sharing one bfloat16 value
   table, whose AdamW groups come from `memory_layers_param_groups`, the research recipe) trained with a plain
   PyTorch AdamW loop
   (`model(input_ids=..., labels=...)` returns the next-token loss), with the loss on fixed training windows
   and on a held-out slice of the text (the last 10%, never trained on) measured before and after training;
3. `save_pretrained` of model and tokenizer, which also writes the model's code next to the weights, so the
   folder reloads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` and
   `AutoTokenizer.from_pretrained(folder)` (here, with memory-zoo imported, transformers prefers the registered
   classes; where memory-zoo is not installed, the code saved in the folder is used);
4. generation through `pipeline("text-generation", ...)`, and a check that cached (incremental) and uncached
   greedy decoding produce the same tokens.

A Masked Mixer has no positional embeddings: its token mixing is a learned `L x L` lower-triangular matrix per
block, so the context length `L = max_position_embeddings` is fixed. Inputs may be shorter than `L`, never
longer, and prompt length + `max_new_tokens` must stay <= `L` when generating. A Memory Mosaic has no such limit:
`--context-length` is only its training window (`block_size`); its memories keep every past token when generating.

The default corpus is a dozen of Shakespeare's sonnets (public domain, about 7 KB) embedded in this file, so the
script runs anywhere. That is far too little text to generalise from: the model memorises it (the training loss
falls close to zero and the greedy sample recites the sonnet it starts), while the held-out loss rises after the
first few dozen steps. Use `--text PATH` with a bigger plain-text file (for example tiny-shakespeare) to see the
held-out loss fall as well.

Flags:
    --architecture A     masked-mixer (default), memory-mosaics or memory-layers
    --text PATH          plain UTF-8 text to train on (default: the embedded sonnets)
    --steps N            optimisation steps (default 600: the whole script takes ~25 s on 2 idle CPU cores)
    --seed N             seed of initialisation, batch sampling and the train/eval windows (default 0)
    --output-dir DIR     where model and tokenizer are saved (default outputs/quickstart-<architecture>)
    --vocab-size N       BPE vocabulary size, special tokens included (default 512)
    --context-length L   the training window; the Masked Mixer's fixed context length (default 64)
    --batch-size N       windows per step (default 16)
    --lr LR              AdamW peak learning rate (default 3e-3, linear warm-up then cosine decay)
    --prompt TEXT        prompt of the generated sample (default "Shall I compare thee")
    --max-new-tokens N   tokens to generate; capped so that prompt + new tokens fit the context (default 48)

Run: `python examples/quickstart.py` (add `--text ../shared/data/tinyshakespeare.txt --steps 1000` for more).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never reach the Hugging Face Hub

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline

from memory_zoo import (
    MaskedMixerConfig,
    MaskedMixerForCausalLM,
    MemoryLayersConfig,
    MemoryLayersForCausalLM,
    MemoryMosaicsConfig,
    MemoryMosaicsForCausalLM,
    memory_layers_param_groups,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
HELD_OUT_FRACTION = 0.1  # the last 10% of the text (cut at a line break) is never trained on
MAX_EVAL_WINDOWS = 64  # cap on the windows of each evaluation set, so big corpora evaluate quickly

# Shakespeare, Sonnets 1, 2, 12, 18, 29, 30, 55, 60, 65, 73, 116 and 130 (1609; public domain).
SONNETS = """\
I
From fairest creatures we desire increase,
That thereby beauty's rose might never die,
But as the riper should by time decease,
His tender heir might bear his memory:
But thou, contracted to thine own bright eyes,
Feed'st thy light's flame with self-substantial fuel,
Making a famine where abundance lies,
Thyself thy foe, to thy sweet self too cruel.
Thou that art now the world's fresh ornament
And only herald to the gaudy spring,
Within thine own bud buriest thy content,
And, tender churl, mak'st waste in niggarding.
Pity the world, or else this glutton be,
To eat the world's due, by the grave and thee.

II
When forty winters shall besiege thy brow,
And dig deep trenches in thy beauty's field,
Thy youth's proud livery, so gazed on now,
Will be a tatter'd weed, of small worth held:
Then being ask'd where all thy beauty lies,
Where all the treasure of thy lusty days,
To say, within thine own deep-sunken eyes,
Were an all-eating shame and thriftless praise.
How much more praise deserved thy beauty's use,
If thou couldst answer 'This fair child of mine
Shall sum my count and make my old excuse,'
Proving his beauty by succession thine!
This were to be new made when thou art old,
And see thy blood warm when thou feel'st it cold.

XII
When I do count the clock that tells the time,
And see the brave day sunk in hideous night;
When I behold the violet past prime,
And sable curls all silver'd o'er with white;
When lofty trees I see barren of leaves
Which erst from heat did canopy the herd,
And summer's green all girded up in sheaves
Borne on the bier with white and bristly beard,
Then of thy beauty do I question make,
That thou among the wastes of time must go,
Since sweets and beauties do themselves forsake
And die as fast as they see others grow;
And nothing 'gainst Time's scythe can make defence
Save breed, to brave him when he takes thee hence.

XVIII
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date:
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance, or nature's changing course, untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.

XXIX
When, in disgrace with fortune and men's eyes,
I all alone beweep my outcast state,
And trouble deaf heaven with my bootless cries,
And look upon myself and curse my fate,
Wishing me like to one more rich in hope,
Featured like him, like him with friends possess'd,
Desiring this man's art and that man's scope,
With what I most enjoy contented least;
Yet in these thoughts myself almost despising,
Haply I think on thee, and then my state,
Like to the lark at break of day arising
From sullen earth, sings hymns at heaven's gate;
For thy sweet love remember'd such wealth brings
That then I scorn to change my state with kings.

XXX
When to the sessions of sweet silent thought
I summon up remembrance of things past,
I sigh the lack of many a thing I sought,
And with old woes new wail my dear time's waste:
Then can I drown an eye, unused to flow,
For precious friends hid in death's dateless night,
And weep afresh love's long since cancell'd woe,
And moan the expense of many a vanish'd sight:
Then can I grieve at grievances foregone,
And heavily from woe to woe tell o'er
The sad account of fore-bemoaned moan,
Which I new pay as if not paid before.
But if the while I think on thee, dear friend,
All losses are restored and sorrows end.

LV
Not marble, nor the gilded monuments
Of princes, shall outlive this powerful rhyme;
But you shall shine more bright in these contents
Than unswept stone, besmear'd with sluttish time.
When wasteful war shall statues overturn,
And broils root out the work of masonry,
Nor Mars his sword nor war's quick fire shall burn
The living record of your memory.
'Gainst death and all-oblivious enmity
Shall you pace forth; your praise shall still find room
Even in the eyes of all posterity
That wear this world out to the ending doom.
So, till the judgment that yourself arise,
You live in this, and dwell in lovers' eyes.

LX
Like as the waves make towards the pebbled shore,
So do our minutes hasten to their end;
Each changing place with that which goes before,
In sequent toil all forwards do contend.
Nativity, once in the main of light,
Crawls to maturity, wherewith being crown'd,
Crooked eclipses 'gainst his glory fight,
And Time that gave doth now his gift confound.
Time doth transfix the flourish set on youth
And delves the parallels in beauty's brow,
Feeds on the rarities of nature's truth,
And nothing stands but for his scythe to mow:
And yet to times in hope my verse shall stand,
Praising thy worth, despite his cruel hand.

LXV
Since brass, nor stone, nor earth, nor boundless sea,
But sad mortality o'er-sways their power,
How with this rage shall beauty hold a plea,
Whose action is no stronger than a flower?
O, how shall summer's honey breath hold out
Against the wreckful siege of battering days,
When rocks impregnable are not so stout,
Nor gates of steel so strong, but Time decays?
O fearful meditation! where, alack,
Shall Time's best jewel from Time's chest lie hid?
Or what strong hand can hold his swift foot back?
Or who his spoil of beauty can forbid?
O, none, unless this miracle have might,
That in black ink my love may still shine bright.

LXXIII
That time of year thou mayst in me behold
When yellow leaves, or none, or few, do hang
Upon those boughs which shake against the cold,
Bare ruin'd choirs, where late the sweet birds sang.
In me thou see'st the twilight of such day
As after sunset fadeth in the west,
Which by and by black night doth take away,
Death's second self, that seals up all in rest.
In me thou see'st the glowing of such fire
That on the ashes of his youth doth lie,
As the death-bed whereon it must expire,
Consumed with that which it was nourish'd by.
This thou perceivest, which makes thy love more strong,
To love that well which thou must leave ere long.

CXVI
Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove:
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wandering bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come:
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me proved,
I never writ, nor no man ever loved.

CXXX
My mistress' eyes are nothing like the sun;
Coral is far more red than her lips' red;
If snow be white, why then her breasts are dun;
If hairs be wires, black wires grow on her head.
I have seen roses damask'd, red and white,
But no such roses see I in her cheeks;
And in some perfumes is there more delight
Than in the breath that from my mistress reeks.
I love to hear her speak, yet well I know
That music hath a far more pleasing sound;
I grant I never saw a goddess go;
My mistress, when she walks, treads on the ground:
And yet, by heaven, I think my love as rare
As any she belied with false compare.
"""


@dataclass
class Corpus:
    """The text split into a training part and a held-out part (the last lines)."""

    name: str
    train_text: str
    held_out_text: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a tiny memory model on CPU, save it, reload it and generate text (offline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--architecture", choices=["masked-mixer", "memory-mosaics", "memory-layers"],
                        default="masked-mixer",
                        help="which memory-zoo architecture to train")
    parser.add_argument("--text", type=Path, default=None, help="UTF-8 text file to train on (default: embedded sonnets)")
    parser.add_argument("--steps", type=int, default=600, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--output-dir", type=Path, default=None, help="save folder (outputs/quickstart-<arch>)")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (special tokens included)")
    parser.add_argument("--context-length", type=int, default=64, help="training window (the mixer's fixed L)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per optimisation step")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate")
    parser.add_argument("--prompt", default="Shall I compare thee", help="prompt of the generated sample")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate (capped to fit L)")
    args = parser.parse_args(argv)
    for name in ("steps", "vocab_size", "context_length", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.context_length < 2:
        parser.error("--context-length must be at least 2 (one input and one target token).")
    if args.vocab_size <= 256 + len(SPECIAL_TOKENS):
        parser.error(f"--vocab-size must exceed {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens).")
    if args.output_dir is None:
        args.output_dir = Path("outputs") / f"quickstart-{args.architecture}"
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file (pass a plain UTF-8 text file, or omit --text).")
    return args


def load_corpus(path: Path | None) -> Corpus:
    """Read the text (or take the embedded sonnets) and keep its last ~10% of lines for evaluation."""
    if path is None:
        name, text = "embedded sonnets", SONNETS
    else:
        name, text = str(path), path.read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, int(len(text) * (1 - HELD_OUT_FRACTION))) + 1
    if cut <= 0 or len(text) - cut < 100:
        raise SystemExit(f"{name}: too little text ({len(text)} characters); give at least a few KB.")
    return Corpus(name, text[:cut], text[cut:])


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every byte is in the vocabulary, so any text round-trips and `<unk>` is never needed."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def build_model(tokenizer: PreTrainedTokenizerFast, context_length: int, architecture: str = "masked-mixer"):
    """A tiny model: a mixer of 4 blocks of width 128 (about 0.68M parameters at L = 64, vocabulary 512), or a
    Memory Mosaic of 4 blocks of width 128 with 4 heads and 256-slot persistent memories (about 0.66M parameters), or
    a Memory Layers decoder of 4 blocks of width 128 whose blocks 1 and 3 read one shared 4096-slot product-key memory
    (about 1.29M parameters, 0.52M of them in the bfloat16 value table)."""
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if architecture == "memory-layers":
        config = MemoryLayersConfig(
            vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, multiple_of=32, max_position_embeddings=context_length, memory_layers=[1, 3],
            memory_n_keys=64, memory_heads=4, memory_knn=8, memory_k_dim=64, **special,
        )
        return MemoryLayersForCausalLM(config)
    if architecture == "memory-mosaics":
        config = MemoryMosaicsConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            pmem_size=256,
            block_size=context_length,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return MemoryMosaicsForCausalLM(config)
    config = MaskedMixerConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=4,
        max_position_embeddings=context_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return MaskedMixerForCausalLM(config)


def eval_windows(tokens: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Up to `MAX_EVAL_WINDOWS` non-overlapping windows of `length` tokens (one shorter window for short text)."""
    if len(tokens) < length:
        return tokens[None]
    windows = tokens[: len(tokens) // length * length].view(-1, length)
    if len(windows) > MAX_EVAL_WINDOWS:
        windows = windows[torch.randperm(len(windows), generator=generator)[:MAX_EVAL_WINDOWS]]
    return windows


def sample_batch(tokens: torch.Tensor, length: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """`batch_size` windows of `length` tokens starting at random offsets of the training stream."""
    starts = torch.randint(0, len(tokens) - length + 1, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def mean_loss(model, windows: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) over `windows [N, T]`."""
    model.eval()
    total = 0.0
    for batch in windows.split(batch_size):
        total += model(input_ids=batch, labels=batch, use_cache=False).loss.item() * len(batch)
    model.train()
    return total / len(windows)


def train(
    model,
    tokens: torch.Tensor,
    length: int,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Plain AdamW loop on windows of `length` tokens: linear warm-up over 10% of the steps, then cosine decay.

    Memory Layers value tables get their own group (the research recipe: a fixed base learning rate, here `lr / 3`,
    scheduled like the rest); every other model trains with one group."""
    groups = (memory_layers_param_groups(model, lr=lr, weight_decay=0.01, value_lr=lr / 3)
              if isinstance(model, MemoryLayersForCausalLM) else model.parameters())
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    progress = tqdm(range(steps), desc="training", unit="step", dynamic_ncols=True)
    smoothed = None
    for _ in progress:
        batch = sample_batch(tokens, length, batch_size, generator)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        smoothed = loss.item() if smoothed is None else 0.9 * smoothed + 0.1 * loss.item()
        progress.set_postfix(loss=f"{smoothed:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")


def generate_sample(output_dir: Path, prompt: str, max_new_tokens: int) -> None:
    """Reload the saved folder the way a user of the Hub would, generate through a pipeline, check the cache."""
    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model.eval()
    print(f"reloaded {type(model).__name__} (code: {type(model).__module__}) and {type(tokenizer).__name__}")

    context = getattr(model.config, "max_position_embeddings", None)  # a Memory Mosaic has no hard limit
    prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if context is not None and prompt_ids.shape[1] >= context:
        raise SystemExit(f"The prompt is {prompt_ids.shape[1]} tokens; this mixer's context is {context}. Shorten it.")
    new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - prompt_ids.shape[1])
    if new_tokens < max_new_tokens:
        print(f"max_new_tokens capped to {new_tokens}: prompt ({prompt_ids.shape[1]}) + new tokens must fit L = {context}")

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator(prompt, max_new_tokens=new_tokens, do_sample=False)[0]["generated_text"]
    print(f"\n--- greedy sample ({new_tokens} new tokens) ---\n{text}\n---\n")

    with torch.no_grad():
        options = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        cached = model.generate(prompt_ids, use_cache=True, **options)
        uncached = model.generate(prompt_ids, use_cache=False, **options)
    same = torch.equal(cached, uncached)
    print(f"cached and uncached greedy generation give the same {cached.shape[1] - prompt_ids.shape[1]} tokens: {same}")
    if not same:
        raise SystemExit("Cached and uncached generation differ: please report this as a memory-zoo bug.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    corpus = load_corpus(args.text)
    tokenizer = train_tokenizer(corpus.train_text, args.vocab_size)
    train_tokens, held_out_tokens = encode(tokenizer, corpus.train_text), encode(tokenizer, corpus.held_out_text)
    length = args.context_length
    if len(train_tokens) < length:
        raise SystemExit(f"The training text is only {len(train_tokens)} tokens; it must exceed the context ({length}).")
    print(f"corpus: {corpus.name}, {len(corpus.train_text) + len(corpus.held_out_text):,} characters; "
          f"tokenizer: byte-level BPE, {len(tokenizer)} tokens; "
          f"{len(train_tokens):,} training / {len(held_out_tokens):,} held-out tokens")

    model = build_model(tokenizer, length, args.architecture)
    window = "fixed context L" if args.architecture == "masked-mixer" else "training window"
    print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"hidden {model.config.hidden_size}, {model.config.num_hidden_layers} blocks, {window} = {length}")

    held_out = eval_windows(held_out_tokens, length, generator)
    train_fixed = eval_windows(train_tokens, length, generator)
    before = mean_loss(model, held_out), mean_loss(model, train_fixed)
    print(f"before training: held-out loss {before[0]:.3f}, train loss {before[1]:.3f} "
          f"(uniform guess: ln {len(tokenizer)} = {math.log(len(tokenizer)):.3f})")

    train_started = time.perf_counter()
    train(model, train_tokens, length, args.steps, args.batch_size, args.lr, generator)
    train_seconds = time.perf_counter() - train_started
    after = mean_loss(model, held_out), mean_loss(model, train_fixed)
    print(f"after training:  held-out loss {after[0]:.3f}, train loss {after[1]:.3f}")

    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved model, tokenizer and remote code to {args.output_dir}: "
          f"{', '.join(sorted(p.name for p in args.output_dir.iterdir()))}")

    generate_sample(args.output_dir, args.prompt, args.max_new_tokens)

    print(f"held-out loss: {before[0]:.2f} -> {after[0]:.2f} ({after[0] - before[0]:+.2f} nats)")
    if after[0] > before[0]:
        print("  (it rose: this little text is memorised rather than generalised from; "
              "train on a bigger file with --text to see it fall)")
    print(f"loss: {before[1]:.2f} -> {after[1]:.2f} ({after[1] - before[1]:+.2f} nats, fixed training windows) "
          f"in {args.steps} steps, {train_seconds:.0f} s ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
