"""The paper's own MNIST figures (Hinton, Vinyals & Dean 2015), typed in once; everything beside
them in a report is measured."""

PAPER = {
    "table": {"teacher_errors": 67, "alone_errors": 146, "distilled_errors": 74,
              "transfer": round((146 - 74) / (146 - 67), 2)},
    "temperature": "With 300 or more units per layer all temperatures above 8 gave fairly similar "
                   "results; with 30 units, temperatures from 2.5 to 4 worked significantly better "
                   "than higher or lower ones.",
    "ensemble": "No MNIST figure. Speech (Table 1): one model 58.9% frame accuracy, an ensemble "
                "of 10 61.1%, one model distilled from the ensemble 60.8%.",
    "mythical": {"errors": 206, "errors_on_class": 133, "class_test_examples": 1010,
                 "offset": 3.5, "corrected_errors": 109, "corrected_errors_on_class": 14,
                 # The share of test 3s right after the correction: 1 - 14 / 1010 = 98.6%.
                 "corrected_accuracy_on_class": 1 - 14 / 1010},
    "only_classes": {"error_rate": 0.473, "offset": -7.6, "corrected_error_rate": 0.132},
    "regulariser": "Speech (Table 5), frame accuracy on test: 100% of the data, hard targets "
                   "58.9%; 3% of the data, hard targets 44.5% (needed early stopping); 3% of "
                   "the data, soft targets 57.0% (converged without early stopping).",
}
