"""The demo region of DOMAIN.md: Guangdong → Guangzhou → Liwan, with synthetic codes.

USCCs are generated with valid check characters from made-up organisation
codes; no real organisation's or person's code is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from xhub.protocol.codes import make_uscc


@dataclass(frozen=True)
class DemoMember:
    key: str
    name: str
    division: str
    roles: str
    org_base: str
    subsystem: str = ""
    signing_alg: str = "ecdsa-p256"

    @property
    def uscc(self) -> str:
        # 1 = 机关 registering authority, 1 = 机关 category.
        return make_uscc("1", "1", self.division, self.org_base)


DEMO_MEMBERS: tuple[DemoMember, ...] = (
    DemoMember("gd_police", "广东省公安厅", "440000", "issuer", "10000001"),
    DemoMember("gz_market", "广州市市场监督管理局", "440100", "issuer", "20000002"),
    DemoMember("gz_land", "广州市规划和自然资源局", "440100", "issuer", "20000003"),
    DemoMember(
        "lw_center", "荔湾区政务服务中心", "440103", "platform", "30000004", subsystem="onewindow"
    ),
    DemoMember(
        "lw_market",
        "荔湾区市场监督管理局",
        "440103",
        "department,issuer",
        "30000005",
        subsystem="approval",
    ),
    DemoMember(
        "lw_health",
        "荔湾区卫生健康局",
        "440103",
        "department,issuer",
        "30000006",
        subsystem="approval",
        signing_alg="ed25519",
    ),
    DemoMember("lw_audit", "荔湾区纪委监委 效能监察", "440103", "auditor", "30000007"),
)

HUB_ID = "CN.440000.XHUB"
HUB_NAME = "广东省政务数据共享交换平台 (xhub)"
