# Session 8 call 3: what the per-item overhead of the H64 2k causal forward is made of (timing-only hacks in .gpu/exp)
cd .gpu/exp
for v in cudnn base nowait nostore nomask nopp nopp,nowait base cudnn; do
  JFLASH_EXP=$v PYTHONPATH=. timeout 60 python ex.py $v 2>&1 | grep "^{"
done
