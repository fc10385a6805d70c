import json

import numpy as np
import pytest

from mmd_jax.evaluation import across_seeds


def _report(ed, ratio, eval_std, extra=True):
  rows = [{'model': 'diff_instruct', 'sampler': 'student', 'steps': 1,
           'metrics': {'energy_distance': ed, 'mode_ratio_min': ratio},
           'metrics_std': {'energy_distance': eval_std},
           'train_seconds_per_step': 0.1}]
  if extra:
    rows.append({'model': 'emd', 'sampler': 'student', 'steps': 1,
                 'metrics': {'energy_distance': 2 * ed}})
  return {'rows': rows}


def test_combine_mean_and_both_stds():
  rows = across_seeds.combine([_report(0.002, 0.3, 1e-4),
                               _report(0.004, 0.5, 3e-4),
                               _report(0.003, 0.4, 2e-4, extra=False)])
  di, emd = rows
  assert di['num_train_seeds'] == 3 and emd['num_train_seeds'] == 2
  assert di['metrics']['energy_distance'] == pytest.approx(0.003)
  assert di['train_seed_std']['energy_distance'] == pytest.approx(
      np.std([0.002, 0.004, 0.003], ddof=1))
  assert di['eval_seed_std']['energy_distance'] == pytest.approx(2e-4)
  assert 'mode_ratio_min' not in di['eval_seed_std']
  assert emd['metrics']['energy_distance'] == pytest.approx(0.006)
  assert di['train_seconds_per_step'] == pytest.approx(0.1)


def test_metrics_filter_and_markdown():
  rows = across_seeds.combine([_report(0.002, 0.3, 0.0)],
                              metrics=('mode_ratio_min',))
  assert list(rows[0]['metrics']) == ['mode_ratio_min']
  assert rows[0]['train_seed_std']['mode_ratio_min'] == 0.0
  text = across_seeds.markdown(rows, ('mode_ratio_min',))
  assert '| diff_instruct | 1 | 1 | 0.3 ± 0 | 0.1 |' in text
  assert '| emd | 1 | 1 |  |  |' in text


def test_run_reads_workdirs(tmp_path):
  for i, ed in enumerate((0.002, 0.004)):
    (tmp_path / f'w{i}').mkdir()
    (tmp_path / f'w{i}' / 'report.json').write_text(
        json.dumps(_report(ed, 0.3, 0.0)))
  out = tmp_path / 'merged.json'
  text = across_seeds.run([str(tmp_path / 'w0'), str(tmp_path / 'w1')],
                          ('energy_distance',), str(out))
  assert '| diff_instruct | 1 | 2 | 0.003 ± 0.0014 | 0.1 |' in text
  assert json.loads(out.read_text())['rows'][0]['num_train_seeds'] == 2
  with pytest.raises(SystemExit, match='no report.json'):
    across_seeds.run([str(tmp_path)])


def test_curves_merge_quality_logs(tmp_path):
  """quality.jsonl of the same stage in two workdirs: per step, the mean and
  training-seed std; a step only one seed reached counts one seed."""
  logs = {'w0': [(3000, 0.004, 0.3), (6000, 0.002, 0.5)],
          'w1': [(3000, 0.006, 0.5)]}
  for w, recs in logs.items():
    stage = tmp_path / w / 'emd_k1'
    stage.mkdir(parents=True)
    (tmp_path / w / 'evaluate').mkdir()          # a stage without a log
    (stage / 'quality.jsonl').write_text(''.join(
        json.dumps({'step': s, 'eval/energy_distance': ed,
                    'eval/mode_ratio_min': r}) + '\n' for s, ed, r in recs))
    (tmp_path / w / 'report.json').write_text(json.dumps(
        _report(0.001, 0.6, 0.0)))
  workdirs = [str(tmp_path / 'w0'), str(tmp_path / 'w1')]
  rows = across_seeds.curves(workdirs, ('energy_distance',))
  assert [(r['stage'], r['step'], r['num_train_seeds']) for r in rows] == [
      ('emd_k1', 3000, 2), ('emd_k1', 6000, 1)]
  assert rows[0]['metrics'] == {'energy_distance': pytest.approx(0.005)}
  assert rows[0]['train_seed_std']['energy_distance'] == pytest.approx(
      np.std([0.004, 0.006], ddof=1))
  out = tmp_path / 'merged.json'
  text = across_seeds.run(workdirs, ('energy_distance', 'mode_ratio_min'),
                          str(out), with_curves=True)
  assert '| emd_k1 | 3000 | 2 | 0.005 ± 0.0014 | 0.4 ± 0.14 |' in text
  assert '| emd_k1 | 6000 | 1 | 0.002 ± 0 | 0.5 ± 0 |' in text
  assert len(json.loads(out.read_text())['curves']) == 2
