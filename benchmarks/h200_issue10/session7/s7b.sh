# Setup: mkdir -p .gpu/bs && git archive 7b270f2 jflash | tar -x -C .gpu/bs && cp benchmarks/h200_issue10/session7/sched.py .gpu/
for tag in before after before after; do
  if [ $tag = before ]; then P=.gpu/bs; else P=.; fi
  PYTHONPATH=$P timeout 60 python .gpu/sched.py $tag 2>&1 | grep "^{"
done
