export PYTHONPATH=.
V="cudnn,mosaic_gpu,mosaic_gpu:ov,mosaic_gpu/64/128/3/64/64/2/1,mosaic_gpu/128/128/2/64/64/2/1,mosaic_gpu/64/192/2/64/64/2/1,mosaic_gpu/64/256/2/64/64/2/1,mosaic_gpu/64/128/2/64/64/2/0,cudnn"
NH=768 FWD_ONLY=1 timeout 200 python .gpu/mbench.py $V 64x2048x1 2>&1 | grep "^{"
NH=2048 FWD_ONLY=1 timeout 100 python .gpu/mbench.py cudnn,mosaic_gpu 64x2048x1 2>&1 | grep "^{"
