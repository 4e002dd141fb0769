"""Using a finished federation's model: classify text and evaluate it on labelled data.

Run by the ``fedshield predict`` and ``fedshield evaluate`` commands, on the operator's
machine or anyone's that holds a finished run's model (its folder with model.json and
model.pt). Everything runs there: an owner can evaluate the federation's model on its
own private data and nothing leaves the machine. The model is verified first by
``common/model_card.py`` (inference -> common only).
"""
