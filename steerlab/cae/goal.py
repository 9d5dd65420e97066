"""The bars of the generalisation goal (issue 26), shared by the protocol that runs the cells and the report that
reads them."""

#: The perplexity ratio on the corpus a cell may cost at either sign (and the cap a chosen strength must keep).
MAX_PPL_RATIO = 1.5
#: The judge's AUC on labelled texts below which a cell's OOD numbers read "judge cannot tell".
MIN_JUDGE_AUC = 0.8
