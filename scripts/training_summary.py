#!/usr/bin/env python3
"""The default model's training record and its reproduction check (scripts/make-default-model.sh).

  training_summary.py WORK CONFIG_DIR         JSON on stdout: every stage's steps, training time, tokens, final
                                              train loss (mean of the last 50 steps) and held-out evals
  training_summary.py --compare A.json B.json held-out perplexities (cepe perplexity --json) of two models, pooled
                                              over the sources at each (protocol, context); exit status 1 when any
                                              differs by more than 2%, or when rows are missing or score other tokens
  training_summary.py --table TRAINING.json   the model card's stage table (Markdown) from a training record
"""
import json
import math
import os
import sys

STAGES = ['decoder', 'mlm', 'warmup', 'cepe', 'cepe-long', 'keys', 'cepe-long2']


def stage_record(work, cfg_dir, name):
    cfg = json.load(open(os.path.join(cfg_dir, name + '.json')))
    log = os.path.join(work, cfg['output_dir'], 'log.jsonl')
    if not os.path.exists(log):
        return None
    steps, evals, seconds, last_elapsed, tokens = {}, [], 0.0, 0.0, 0
    for line in open(log):
        r = json.loads(line)
        if r.get('event') == 'eval':
            evals.append({k: r[k] for k in ('step', 'eval_loss', 'eval_loss_no_context') if k in r})
            continue
        if 'elapsed_s' in r:
            # elapsed_s restarts with every (resumed) process: a stage's time is the sum of its segments.
            if r['elapsed_s'] < last_elapsed:
                seconds += last_elapsed
            last_elapsed = r['elapsed_s']
        steps[r['step']] = r
    seconds += last_elapsed
    done = [steps[s] for s in sorted(steps)]
    tokens = sum(r.get('tokens', 0) for r in done)
    tail = done[-50:]
    return {
        'stage': cfg['stage'], 'config': 'configs/cepe-tiny/%s.json' % name, 'steps': cfg['steps'],
        'steps_done': len(done), 'batch_size': cfg.get('batch_size', 1), 'seq_len': cfg['data'].get('seq_len'),
        'n_ctx': cfg['data'].get('n_ctx', 0), 'ctx_len': cfg['data'].get('ctx_len', 0), 'lr': cfg['optimizer'].get('lr'),
        'training_seconds': round(seconds, 1), 'tokens': tokens,
        'final_train_loss': round(sum(r['loss'] for r in tail) / len(tail), 4) if tail else None,
        'evals': evals,
    }


def summary(work, cfg_dir):
    out = {'stages': {}}
    for s in STAGES:
        r = stage_record(work, cfg_dir, s)
        if r:
            out['stages'][s] = r
    times = os.path.join(work, 'times.tsv')
    if os.path.exists(times):
        out['wall_seconds'] = {}
        for line in open(times):
            name, secs = line.rstrip('\n').split('\t')
            out['wall_seconds'][name] = out['wall_seconds'].get(name, 0) + int(secs)
    out['training_seconds'] = round(sum(r['training_seconds'] for r in out['stages'].values()), 1)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write('\n')


def compare(a_path, b_path):
    """The reproduction check: held-out perplexity pooled over the sources (every scored token of every
    domain) at each (protocol, context length), within 2%. The rows per source are printed too, but a few
    thousand tokens of one domain resolve no 2% (two runs from the same data differ more there by chance)."""
    a = {(r['source'], r['protocol'], r['context_tokens']): r for r in json.load(open(a_path))}
    b = {(r['source'], r['protocol'], r['context_tokens']): r for r in json.load(open(b_path))}
    pooled = {}  # (protocol, context) -> [sum nll shipped, sum nll new, scored tokens]
    missing = False
    print('%-10s %-6s %8s %10s %10s %8s' % ('source', 'proto', 'context', 'shipped', 'new', 'diff'))
    for k in sorted(a):
        if k not in b:
            print('missing in %s: %s' % (b_path, k))
            missing = True
            continue
        if a[k]['scored_tokens'] != b[k]['scored_tokens']:
            print('%s: %d scored tokens against %d: not the same windows' % (k, a[k]['scored_tokens'], b[k]['scored_tokens']))
            missing = True
            continue
        d = b[k]['ppl'] / a[k]['ppl'] - 1
        print('%-10s %-6s %8d %10.3f %10.3f %+7.2f%%' % (k[0], k[1], k[2], a[k]['ppl'], b[k]['ppl'], 100 * d))
        p = pooled.setdefault(k[1:], [0.0, 0.0, 0])
        n = a[k]['scored_tokens']
        p[0] += math.log(a[k]['ppl']) * n
        p[1] += math.log(b[k]['ppl']) * n
        p[2] += n
    worst = float('inf') if missing else 0.0
    for (proto, ctx), (na, nb, n) in sorted(pooled.items()):
        d = math.exp((nb - na) / n) - 1
        worst = max(worst, abs(d))
        print('%-10s %-6s %8d %10.3f %10.3f %+7.2f%%  (%d tokens)' % ('all', proto, ctx, math.exp(na / n), math.exp(nb / n), 100 * d, n))
    print('largest difference of the pooled held-out perplexity: %.2f%% (limit 2%%)' % (100 * worst))
    return 0 if worst <= 0.02 else 1


WHAT = {
    'decoder': 'causal LM on 256-token windows: training text, 25% retrieval documents of one window (needle, then its question), all weights',
    'mlm': 'masked LM (30%, 100% [MASK]) on 128-token windows; starts from the decoder\'s first 4 layers',
    'warmup': 'the encoder reads a copy of the decoder\'s input (15% retrieval data); cross-attention + encoder trained, decoder frozen',
    'cepe': 'preceding text (filtered; half of it 1-16 chunks), concatenated documents, half retrieval data; cross-attention + encoder',
    'cepe-long': 'the same at 64x the window (16384-token contexts, a quarter of the text 1-128 chunks); cross-attention only, the encoder frozen',
    'keys': 'copy precision: 512-token contexts dense with needles (pass key, facts, labelled keys, each asked for), 3 of 4 samples; the rest preceding text; cross-attention + encoder; starts from cepe-long exported in BF16',
    'cepe-long2': 'cepe-long again (fresh 16k retrieval documents, lr 3e-4): long-context perplexity back after keys; cross-attention + encoder',
}


def table(path):
    rec = json.load(open(path))
    print('| stage | what | steps x batch | decoder / context tokens | lr | time | final train loss | held-out loss |')
    print('|---|---|---|---|---|---|---|---|')
    for name, r in rec['stages'].items():
        ctx = '%d x %d' % (r['n_ctx'], r['ctx_len']) if r['n_ctx'] else '-'
        held = '-'
        if r['evals']:
            e = r['evals'][-1]
            held = '%.3f' % e['eval_loss']
            if 'eval_loss_no_context' in e:
                held += ' (%.3f without context)' % e['eval_loss_no_context']
        print('| %s | %s | %d x %d | %s / %s | %g | %d min | %.3f | %s |' % (
            name, WHAT.get(name, ''), r['steps'], r['batch_size'], r['seq_len'], ctx, r['lr'],
            round(r['training_seconds'] / 60), r['final_train_loss'], held))
    total = rec.get('wall_seconds', {})
    print()
    print('Training time %d min on 2 cores; the whole run (corpus, tokenizer, tokens, retrieval data and training) %d min.'
          % (round(rec['training_seconds'] / 60), round(sum(total.values()) / 60)))


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--table':
        table(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == '--compare':
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 3:
        summary(sys.argv[1], sys.argv[2])
        sys.exit(0)
    sys.stderr.write(__doc__)
    sys.exit(2)
