# probe (not product): the width search with multipliers drawn from U(0.75, 1.25) instead of U(0.5, 1.5)
import functools, sys
import prunelab.targets as t
t.draw_multipliers = functools.partial(t.draw_multipliers, spread=0.25)
from prunelab.cli import main
sys.exit(main(sys.argv[1:]))
