export { main, type Io } from './main.js';
export { simulate, type SimulateResult } from './pipeline.js';
export { loadScenario, UsageError, type ScenarioSources } from './load-scenario.js';
export { scenarioSchema, type Scenario, type ScenarioInput } from './scenario.js';
export { PRESETS, type PresetName } from './presets.js';
