"""Candidate model files shared by the sandbox and the Dask tests."""

# A minimal valid LEMUR model file; the markers are replaced by hostile lines.
BASE = '''
import torch
from torch import nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.fc = nn.Linear(in_shape[1] * in_shape[2] * in_shape[3], out_shape[0])
        #INIT

    def forward(self, x):
        #FORWARD
        return self.fc(x.flatten(1))

    def train_setup(self, prm):
        self.criteria = (nn.CrossEntropyLoss(),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            #LEARN
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs), labels)
            loss.backward()
            self.optimizer.step()
'''


def hostile(where: str, code: str) -> str:
    indent = {"INIT": 8, "FORWARD": 8, "LEARN": 12}[where]
    lines = code.splitlines()
    return BASE.replace("#" + where, "\n".join([lines[0]] + [" " * indent + ln for ln in lines[1:]]))
