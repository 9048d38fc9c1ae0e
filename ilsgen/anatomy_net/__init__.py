"""A small U-Net for anatomy (and lesion probability) on chest radiographs, trained by the project.

    model.py  the network, the shipped weights file and CPU inference (`AnatomyNet`)
    data.py   training examples: real radiographs with expert masks (`realcxr` layout) + phantoms
    train.py  `ils anatomy train`: the bounded training run that writes the weights file

torch is imported only inside these modules (the backend that needs it).
"""
