for i in 1 2 3 4; do
  for t in old new; do
    if [ $t = old ]; then d=/tmp/old; m=bench.arrays_new; else d=/work/main; m=bench.arrays; fi
    (cd $d && PYTHONPATH=$d /work/main/.venv/bin/python -m $m --only chain10k,chain5k,chain30k --repeats 3 2>&1 | grep -E "^chain|  numpy  |  ops  |ops, pusher|numpy c|ops c" | tr '\n' ' ' | sed "s/^/$t /"; echo)
  done
done
