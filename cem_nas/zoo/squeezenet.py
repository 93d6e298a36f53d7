"""SqueezeNet-style net: Fire modules (1x1 squeeze, parallel 1x1/3x3 expand) and a conv classifier."""
import torch
from torch import nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class Fire(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        squeeze = c_out // 8
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.BatchNorm2d(squeeze), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, c_out // 2, 1), nn.BatchNorm2d(c_out // 2), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, c_out // 2, 3, padding=1), nn.BatchNorm2d(c_out // 2), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


class Net(nn.Module):
    def __init__(self, in_shape: tuple, out_shape: tuple, prm: dict, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[1], 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            Fire(32, 64),
            Fire(64, 64),
            nn.MaxPool2d(3, stride=2, padding=1),
            Fire(64, 128),
            Fire(128, 128),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(prm['dropout']),
            nn.Conv2d(128, out_shape[0], 1),
            nn.BatchNorm2d(out_shape[0]),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)

    def train_setup(self, prm):
        self.to(self.device)
        self.criteria = (nn.CrossEntropyLoss().to(self.device),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 3)
            self.optimizer.step()
