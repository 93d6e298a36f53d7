"""ShuffleNet-style net: grouped 1x1 convs with a channel shuffle around a depthwise 3x3."""
import torch
from torch import nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class ShuffleUnit(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.stride = stride
        mid = c_out // 4
        branch_out = c_out - c_in if stride == 2 else c_out
        self.reduce = nn.Sequential(nn.Conv2d(c_in, mid, 1, groups=2), nn.BatchNorm2d(mid), nn.ReLU())
        self.expand = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, branch_out, 1, groups=2),
            nn.BatchNorm2d(branch_out),
        )
        self.skip = nn.AvgPool2d(3, stride=2, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.reduce(x)
        n, c, h, w = y.shape
        y = self.expand(y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))
        if self.stride == 2:
            return self.act(torch.cat([self.skip(x), y], 1))
        return self.act(x + y)


class Net(nn.Module):
    def __init__(self, in_shape: tuple, out_shape: tuple, prm: dict, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[1], 24, 3, stride=2, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            ShuffleUnit(24, 48, stride=2),
            ShuffleUnit(48, 48),
            ShuffleUnit(48, 96, stride=2),
            ShuffleUnit(96, 96),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(prm['dropout']),
            nn.Linear(96, out_shape[0]),
        )

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

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
