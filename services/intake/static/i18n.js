// Every string the dashboard shows, in Chinese (the default) and English.
// Domain names follow services/notifier/domain.py (CATEGORY_ZH, RISK_ZH, TIER_ZH, ESCALATION_REASON_ZH).

const STORAGE_KEY = "caselink.lang";
export const LANGUAGES = ["zh-CN", "en"];

const DICTIONARY = {
  "zh-CN": {
    "app.title": "社工转介督导台",
    "app.subtitle": "分级社工站点的案件转介与派单",
    "lang.switch": "English",
    "lang.switch_label": "切换到英文",
    "signin.heading": "登录",
    "signin.token": "访问令牌",
    "signin.hint": "请输入管理员发放的令牌（caselink token create --user …）。令牌只保存在本浏览器中。",
    "signin.submit": "登录",
    "signin.failed": "令牌无效或已被撤销。",
    "signin.empty": "请输入令牌。",
    "signout": "退出登录",
    "who.label": "当前用户",
    "role.worker": "社工",
    "role.supervisor": "督导",
    "role.system": "系统",
    "live.connecting": "连接中",
    "live.on": "实时",
    "live.off": "已断开，正在重连",
    "live.label": "实时更新状态",
    "queue.heading": "升级队列",
    "queue.caption": "本站及下级站点等待处理的案件，最紧急的在前",
    "queue.empty": "队列中没有待处理的案件。",
    "queue.refresh": "刷新",
    "queue.count": "共 {n} 件",
    "col.case": "案件编号",
    "col.risk": "风险",
    "col.category": "类别",
    "col.station": "站点",
    "col.status": "状态",
    "col.reason": "原因",
    "col.waiting": "等待时间",
    "col.time": "时间",
    "col.event": "事件",
    "col.worker": "社工",
    "lookup.label": "按案件编号打开",
    "lookup.submit": "打开",
    "tree.heading": "站点与社工负荷",
    "tree.escalations": "待处理升级 {n}",
    "tree.workers": "社工",
    "tree.no_workers": "本站没有社工。",
    "tree.children": "下级站点",
    "tree.expand": "展开",
    "tree.collapse": "收起",
    "tree.load": "负荷 {load}/{capacity}",
    "tree.on_duty": "在岗",
    "tree.off_duty": "休息",
    "tree.open_short": "在办 {n}",
    "case.heading": "案件详情",
    "case.close": "关闭",
    "case.status": "状态",
    "case.tier": "层级",
    "case.station": "站点",
    "case.room": "转介社工室",
    "case.category": "类别",
    "case.risk": "风险",
    "case.assignee": "承办社工",
    "case.none": "无",
    "case.received_at": "接收时间",
    "case.accept_by": "接单期限",
    "case.resolve_by": "办结期限",
    "case.routing": "分派依据",
    "case.rule": "规则",
    "case.last_search": "最近一次派单查找（{event}，{time}）：",
    "case.need": "要求",
    "case.need_value": "专长 {specialty}，资质 ≥ {certification}，权重 {weight}",
    "case.candidates": "考察社工 {n} 人",
    "case.outcome_assigned": "派给 {worker}（{station}）",
    "case.outcome_queued": "在 {station} 排队",
    "case.manual": "督导人工指派（{by}）",
    "case.via.target": "目标站点",
    "case.via.lateral": "同级站点",
    "case.via.escalation": "上级站点",
    "case.station_search": "{station}（{via}）：考察 {considered} 人，符合 {eligible} 人",
    "case.filtered": "排除：{list}",
    "case.no_explanation": "暂无分派说明。",
    "case.timeline": "时间线",
    "case.loading": "加载中…",
    "actions.heading": "督导操作",
    "actions.escalate": "上转",
    "actions.escalate_help": "将案件转到上一级站点。",
    "actions.refer_back": "回转",
    "actions.refer_back_help": "将案件转回下级站点；不填站点则回到转介社工室所在路径的下一级。",
    "actions.assign": "指派",
    "actions.assign_help": "指派给在岗、资质符合且有余量的社工（专长可不同）。",
    "actions.reason": "原因（可选）",
    "actions.station_id": "站点编号（可选）",
    "actions.worker": "选择社工",
    "actions.worker_choose": "— 请选择 —",
    "actions.worker_id": "或输入社工编号",
    "actions.worker_required": "请选择或输入社工编号。",
    "actions.sending": "提交中…",
    "result.applied": "已生效：案件现在为「{status}」。",
    "result.pending": "已受理，等待处理；结果会出现在时间线中。",
    "result.error": "未执行：{message}",
    "error.network": "无法连接服务器。",
    "error.generic": "请求失败（{status}）。",
    "wait.seconds": "{n} 秒",
    "wait.minutes": "{n} 分钟",
    "wait.hours": "{h} 小时 {m} 分",
    "wait.days": "{d} 天 {h} 小时",
    "field": "字段",
  },
  en: {
    "app.title": "Caselink supervisor dashboard",
    "app.subtitle": "Case referral and dispatch across tiered social-work stations",
    "lang.switch": "中文",
    "lang.switch_label": "Switch to Chinese",
    "signin.heading": "Sign in",
    "signin.token": "Access token",
    "signin.hint": "Enter the token your administrator issued (caselink token create --user …). It is kept in this browser only.",
    "signin.submit": "Sign in",
    "signin.failed": "The token is unknown or revoked.",
    "signin.empty": "Please enter a token.",
    "signout": "Sign out",
    "who.label": "Signed in as",
    "role.worker": "worker",
    "role.supervisor": "supervisor",
    "role.system": "system",
    "live.connecting": "Connecting",
    "live.on": "Live",
    "live.off": "Offline, reconnecting",
    "live.label": "Live update status",
    "queue.heading": "Escalation queue",
    "queue.caption": "Cases waiting at your station and below, most urgent first",
    "queue.empty": "Nothing is waiting on the queue.",
    "queue.refresh": "Refresh",
    "queue.count": "{n} in total",
    "col.case": "Case",
    "col.risk": "Risk",
    "col.category": "Category",
    "col.station": "Station",
    "col.status": "Status",
    "col.reason": "Reason",
    "col.waiting": "Waiting",
    "col.time": "Time",
    "col.event": "Event",
    "col.worker": "Worker",
    "lookup.label": "Open a case by id",
    "lookup.submit": "Open",
    "tree.heading": "Stations and workers' load",
    "tree.escalations": "{n} escalations open",
    "tree.workers": "Workers",
    "tree.no_workers": "No workers at this station.",
    "tree.children": "Stations below",
    "tree.expand": "Expand",
    "tree.collapse": "Collapse",
    "tree.load": "load {load}/{capacity}",
    "tree.on_duty": "on duty",
    "tree.off_duty": "off duty",
    "tree.open_short": "{n} open",
    "case.heading": "Case",
    "case.close": "Close",
    "case.status": "Status",
    "case.tier": "Tier",
    "case.station": "Station",
    "case.room": "Referring room",
    "case.category": "Category",
    "case.risk": "Risk",
    "case.assignee": "Assignee",
    "case.none": "none",
    "case.received_at": "Received",
    "case.accept_by": "Accept by",
    "case.resolve_by": "Resolve by",
    "case.routing": "Why it went there",
    "case.rule": "Rule",
    "case.last_search": "The latest search for a worker ({event}, {time}):",
    "case.need": "Needs",
    "case.need_value": "specialty {specialty}, certification ≥ {certification}, weight {weight}",
    "case.candidates": "{n} workers looked at",
    "case.outcome_assigned": "offered to {worker} ({station})",
    "case.outcome_queued": "queued at {station}",
    "case.manual": "assigned by a supervisor ({by})",
    "case.via.target": "target",
    "case.via.lateral": "sibling",
    "case.via.escalation": "tier above",
    "case.station_search": "{station} ({via}): {considered} considered, {eligible} eligible",
    "case.filtered": "filtered out: {list}",
    "case.no_explanation": "No routing explanation yet.",
    "case.timeline": "Timeline",
    "case.loading": "Loading…",
    "actions.heading": "Supervisor actions",
    "actions.escalate": "Escalate",
    "actions.escalate_help": "Move the case one tier up.",
    "actions.refer_back": "Refer back",
    "actions.refer_back_help": "Send the case down a tier; without a station it goes to the next station down on the referring room's path.",
    "actions.assign": "Assign",
    "actions.assign_help": "Assign to a worker who is on duty, certified enough and has capacity (specialty may differ).",
    "actions.reason": "Reason (optional)",
    "actions.station_id": "Station id (optional)",
    "actions.worker": "Choose a worker",
    "actions.worker_choose": "— choose —",
    "actions.worker_id": "or type a worker id",
    "actions.worker_required": "Choose or type a worker id.",
    "actions.sending": "Sending…",
    "result.applied": "Applied: the case is now “{status}”.",
    "result.pending": "Accepted, not yet applied; the outcome will show in the timeline.",
    "result.error": "Not done: {message}",
    "error.network": "Cannot reach the server.",
    "error.generic": "The request failed ({status}).",
    "wait.seconds": "{n} s",
    "wait.minutes": "{n} min",
    "wait.hours": "{h} h {m} min",
    "wait.days": "{d} d {h} h",
    "field": "field",
  },
};

// Domain vocabularies: [Chinese, English].
const VOCABULARY = {
  category: {
    social_assistance: ["社会救助", "social assistance"],
    elderly_care: ["养老服务", "elderly care"],
    child_protection: ["儿童保护", "child protection"],
    disability_support: ["助残服务", "disability support"],
    mental_health: ["心理健康", "mental health"],
    crisis_intervention: ["危机干预", "crisis intervention"],
    medical_social_work: ["医务社工", "medical social work"],
    family_support: ["家庭支持", "family support"],
    livelihood: ["生计发展", "livelihood"],
    community_governance: ["社区治理", "community governance"],
    resource_linkage: ["资源链接", "resource linkage"],
  },
  risk: {
    low: ["低", "low"],
    medium: ["中", "medium"],
    high: ["高", "high"],
    critical: ["紧急", "critical"],
  },
  tier: {
    village: ["村（社区）社工室", "village room"],
    township: ["乡镇（街道）社工站", "township station"],
    county: ["县（区）社工总站", "county hub"],
    city: ["市社工支持中心", "city centre"],
  },
  reason: {
    no_capacity: ["无可用社工", "no worker available"],
    offer_expired: ["接单超时", "offer not accepted in time"],
    declined: ["被拒绝", "declined"],
    sla_breach: ["超时未办结", "not resolved in time"],
    manual: ["人工上转", "manual escalation"],
    rule: ["规则", "policy rule"],
  },
  status: {
    received: ["已接收", "received"],
    routed: ["已分派", "routed"],
    escalated: ["已上转", "escalated"],
    offered: ["待接单", "offered"],
    queued: ["排队中", "queued"],
    accepted: ["已接单", "accepted"],
    in_progress: ["处理中", "in progress"],
    resolved: ["已办结", "resolved"],
    closed: ["已结案", "closed"],
  },
  event: {
    received: ["接收", "received"],
    routed: ["分派", "routed"],
    assigned: ["派单", "assigned"],
    accepted: ["接单", "accepted"],
    declined: ["拒单", "declined"],
    offer_expired: ["接单超时", "offer expired"],
    queued: ["排队", "queued"],
    escalated: ["上转", "escalated"],
    referred_back: ["回转", "referred back"],
    started: ["开始处理", "started"],
    resolved: ["办结", "resolved"],
    closed: ["结案", "closed"],
    sla_warning: ["时限预警", "SLA warning"],
    sla_breached: ["超出时限", "SLA breached"],
    notified: ["已通知", "notified"],
    notification_failed: ["通知失败", "notification failed"],
  },
  certification: {
    none: ["无证书", "none"],
    assistant: ["助理社工师", "assistant"],
    intermediate: ["社工师", "intermediate"],
    senior: ["高级社工师", "senior"],
  },
  filter: {
    off_duty: ["休息", "off duty"],
    specialty: ["专长不符", "specialty"],
    certification: ["资质不足", "certification"],
    capacity: ["无余量", "capacity"],
    excluded: ["已拒单或超时", "passed over"],
  },
  deadline: {
    accept: ["接单", "accept"],
    resolve: ["办结", "resolve"],
  },
};

let current = initialLanguage();

function initialLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return LANGUAGES.includes(saved) ? saved : "zh-CN";
  } catch {
    return "zh-CN";
  }
}

/** The language in use ("zh-CN" or "en"). */
export function language() {
  return current;
}

/** Switch language and remember it in this browser. */
export function setLanguage(lang) {
  current = LANGUAGES.includes(lang) ? lang : "zh-CN";
  try {
    localStorage.setItem(STORAGE_KEY, current);
  } catch {
    // Private mode: the choice lasts for this page only.
  }
}

/** A UI string, with {name} placeholders filled from vars. */
export function t(key, vars = {}) {
  const text = DICTIONARY[current][key] ?? DICTIONARY["zh-CN"][key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

/** A domain value in words (kind: category, risk, tier, reason, status, event, certification, filter, deadline). */
export function term(kind, value) {
  if (value === null || value === undefined || value === "") return "—";
  const names = VOCABULARY[kind]?.[value];
  if (!names) return String(value);
  return current === "zh-CN" ? names[0] : names[1];
}

/** Fill every element marked data-i18n / data-i18n-placeholder / data-i18n-aria-label under root. */
export function translatePage(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
  document.title = t("app.title");
}
